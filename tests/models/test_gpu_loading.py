"""Loading on a CUDA GPU: bf16 by default, generation with the KV cache, NF4 gradients after generate().

Self-contained: the models are tiny random-init Llamas with a tokenizer trained in the test session
(``chatml_bpe_tokenizer``), because the GPU machine has neither the embedded default nor the shared tokenizers.
"""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from _models import rel_err, write_tiny_model

from tunesmith.errors import TunesmithError
from tunesmith.generation.chat import chat
from tunesmith.models.device import is_bfloat16_supported, resolve_device, resolve_dtype
from tunesmith.models.loader import load

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, chatml_bpe_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-gpu-llama")
    return write_tiny_model(folder, tokenizer=chatml_bpe_tokenizer, hidden_size=128, intermediate_size=256)


def test_gpu_is_the_default_device_with_bf16_where_supported(tiny_folder):
    assert resolve_device(None).type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype(None, "cuda") == expected
    assert is_bfloat16_supported() == torch.cuda.is_bf16_supported()
    model, _ = load(tiny_folder)
    assert model.device.type == "cuda" and model.dtype == expected


def test_generate_with_kv_cache_and_chat_on_gpu(tiny_folder):
    model, tokenizer = load(tiny_folder)
    ids = tokenizer("The patient reported", return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 8
    assert torch.equal(cached, uncached), "the KV cache must not change greedy output"
    assert isinstance(chat(model, tokenizer, "hello", max_new_tokens=4, stream=False), str)


def test_4bit_on_gpu_gradients_after_generate_match_the_dense_reference(tiny_folder):
    model, tokenizer = load(tiny_folder, load_in_4bit=True, dtype=torch.float32)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 14 and all(m.weight.device.type == "cuda" for m in four_bit)

    dense, _ = load(tiny_folder, dtype=torch.float32)
    layers = dict(model.named_modules())
    for name, module in dense.named_modules():
        if isinstance(layers.get(name), bnb.nn.Linear4bit):
            weight = layers[name].weight
            module.weight.data = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()

    ids = tokenizer("Rest, fluids and a balanced diet help.", return_tensors="pt").input_ids.cuda()
    model.generate(ids, max_new_tokens=4, do_sample=False)

    def input_gradient(m):
        embeds = m.get_input_embeddings()(ids).detach().float().requires_grad_(True)
        m(inputs_embeds=embeds, labels=ids).loss.backward()
        return embeds.grad

    grad, ref = input_gradient(model), input_gradient(dense)
    assert rel_err(grad, ref) < 1e-3


def test_absent_gpu_index_is_named():
    index = torch.cuda.device_count() + 3
    with pytest.raises(TunesmithError, match=f"cuda:{index}"):
        resolve_device(f"cuda:{index}")
