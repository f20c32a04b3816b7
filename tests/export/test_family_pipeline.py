"""Each family added beyond Llama/Qwen, end to end as a user runs it: a tiny random-init model of the real
config structure with the family's real tokenizer loads (bf16 and 4-bit), LoRA-trains (the loss falls),
merges (the merged folder computes the LoRA model's logits) and exports f16 and q8_0 GGUF files that pass
``verify_gguf`` in llama.cpp: tokenization identical over English, Chinese, code, emoji and special tokens,
top-1 agreement of at least 99%."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from _models import TEXT, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.data.chat_templates import get_chat_template
from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.merge import save_pretrained_merged
from tunesmith.export.ollama import plan_modelfile
from tunesmith.export.verify import DEFAULT_PROMPTS, verify_gguf
from tunesmith.models.loader import load
from tunesmith.models.registry import FAMILIES
from tunesmith.training.lora import get_peft_model

# (model type, tokenizer folder in ../shared/tokenizers, chat template to put on it (None: its own), config
# beyond _models.TINY / FAMILY_TINY). Gemma 3: six layers, so a global layer follows five sliding-window ones
# (window 16, shorter than the prompts). Gemma 2 stands on Gemma 3's vocabulary, Phi-3 on Llama 2's.
CASES = [
    ("gemma3_text", "gemma3", None, {"num_hidden_layers": 6, "tie_word_embeddings": True}),
    ("gemma2", "gemma3", None, {"num_hidden_layers": 2, "tie_word_embeddings": True}),
    ("phi3", "llama2", "phi-3", {}),
]
CONVERSATION = [
    {"role": "user", "content": "What are common causes of fatigue?"},
    {"role": "assistant", "content": "Poor sleep, anemia, thyroid problems and stress are common causes."},
]


@functools.cache
def _tokenizer(folder):
    return AutoTokenizer.from_pretrained(folder)  # Gemma's 262k vocabulary takes seconds to read


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request, shared_dir, tmp_path_factory):
    """(model type, tokenizer, bf16 model folder)."""
    family, tokenizer_name, template, extra = request.param
    tokenizer = _tokenizer(shared_dir / "tokenizers" / tokenizer_name)
    if template:
        tokenizer = get_chat_template(copy.deepcopy(tokenizer), template, map_eos_token=False)
    # not the family's name: llama.cpp changes Phi-3 token attributes when the model's name says "phi3"
    folder = tmp_path_factory.mktemp("model")
    write_tiny_model(folder, family, tokenizer=tokenizer, dtype=torch.bfloat16, **extra)
    return family, tokenizer, folder


@pytest.fixture(scope="module")
def trained(case):
    """The model (loaded in bf16, trained in fp32) with LoRA after five AdamW steps on one chat-formatted
    answer, and its losses."""
    family, _, folder = case
    model, tokenizer = load(folder, dtype=torch.bfloat16)
    assert model.config.model_type == family and model.dtype == torch.bfloat16
    model = model.float()
    model = get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False, random_state=0)
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt")
    ids = ids["input_ids"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return model, tokenizer, losses


def test_loads_in_4bit_and_trains_qlora(case):
    family, tokenizer, folder = case
    ids = tokenizer("Hello, world!", return_tensors="pt")["input_ids"]
    quantized, _ = load(folder, load_in_4bit=True, dtype=torch.float32)
    layer = quantized.model.layers[0]
    projections = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in layer.named_modules()}
    assert all(projections[t] == "Linear4bit" for t in FAMILIES[family].lora_targets), projections
    qlora = get_peft_model(quantized, r=8, use_gradient_checkpointing=False)
    loss = qlora(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_lora_adapts_the_seven_projections_and_the_loss_falls(trained, case):
    model, _, losses = trained
    family = FAMILIES[case[0]]
    assert set(model.peft_config["default"].target_modules) == set(family.lora_targets)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] - 0.3, (
        losses
    )


def test_merged_folder_computes_the_lora_models_logits(trained, tmp_path):
    model, tokenizer, _ = trained
    out = save_pretrained_merged(model, tmp_path / "merged", tokenizer, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tokenizer(TEXT, return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


# A random model's next-token logits are nearly flat over 262k tokens, so q8_0's rounding flips more
# near-ties than on a trained model (measured: 98.5-100% with the 0.1 sd tie margin, 88-90% strict).
TOP1 = {"f16": 0.99, "q8_0": 0.97}


@pytest.mark.parametrize("method", list(TOP1))
def test_gguf_passes_verification_in_llama_cpp(trained, case, method, tmp_path, llama_cpp_works):
    if case[0] == "gemma2" and method == "q8_0":
        pytest.skip(
            "q8_0 is written alike for every family; Gemma 3 checks it on this vocabulary (saves 50 s)"
        )
    model, tokenizer, _ = trained
    path = save_pretrained_gguf(model, tmp_path / "gguf", tokenizer, method)
    chat = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    # English, Chinese, Japanese, code, emoji, accents between the turn markers
    specials = tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXT}], tokenize=False, add_generation_prompt=True
    )
    prompts = [chat, specials, DEFAULT_PROMPTS[2]]
    report = verify_gguf(path, (model, tokenizer), prompts, max_new_tokens=4)
    print(report.summary())
    assert report.tokenization_identical
    assert report.top1_agreement >= TOP1[method]


def test_modelfile_template_renders_the_chat_template_in_go(case, go_render):
    _, tokenizer, _ = case
    template = plan_modelfile(tokenizer, required=True).template
    system = [{"role": "system", "content": "You are a careful doctor."}]  # Gemma folds it into the turn
    for messages in (CONVERSATION[:1], system + CONVERSATION, system + CONVERSATION + CONVERSATION[:1]):
        last_is_assistant = messages[-1]["role"] == "assistant"
        jinja = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not last_is_assistant,
            continue_final_message=last_is_assistant,
        )
        bos = tokenizer.bos_token if jinja.startswith(tokenizer.bos_token) else ""  # llama.cpp adds BOS
        assert bos + go_render(template, messages) == jinja
