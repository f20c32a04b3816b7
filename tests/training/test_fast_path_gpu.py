"""On CUDA, ``FastLanguageModel.get_peft_model`` turns on the fused fast path by itself, and training
through it matches the plain transformers + peft path (loss within 0.5%, LoRA gradients within 2e-2)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _tiny_llama_folder(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)  # fmt: skip
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(["the patient reports fatigue and headache " * 20], trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>").save_pretrained(path)
    return path


def _one_step(path, fast_path: bool, qlora: bool):
    from tunesmith import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(str(path), dtype=torch.bfloat16, load_in_4bit=qlora)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, fast_path=fast_path,
                                             init_lora_weights="gaussian")  # fmt: skip
    patched = "_tunesmith_fast_path" in model.__dict__
    x = torch.randint(2, 512, (2, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    model.train()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    return patched, loss.item(), grads


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_get_peft_model_turns_on_the_fast_path_and_matches_the_plain_path(tmp_path, qlora):
    if qlora:
        pytest.importorskip("bitsandbytes")
    path = _tiny_llama_folder(tmp_path)
    patched, loss, grads = _one_step(path, fast_path=True, qlora=qlora)
    plain, ref_loss, ref_grads = _one_step(path, fast_path=False, qlora=qlora)
    assert patched and not plain
    assert abs(loss - ref_loss) / ref_loss < 5e-3
    for name, ref in ref_grads.items():
        err = (grads[name] - ref).norm() / ref.norm().clamp_min(1e-12)
        assert err < 2e-2, name
