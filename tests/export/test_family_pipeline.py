"""Each family added beyond Llama/Qwen, end to end as a user runs it: a tiny random-init model of the real
config structure with the family's real tokenizer loads (bf16 and 4-bit), LoRA-trains (the loss falls),
merges (the merged folder computes the LoRA model's logits) and exports f16 and q8_0 GGUF files that pass
``verify_gguf`` in llama.cpp: tokenization identical over English, Chinese, code, emoji and special tokens,
top-1 agreement of at least 99%."""

from __future__ import annotations

import copy
import functools
import math
import re

import pytest
import torch
from _models import FAMILY_TINY, TEXT, TINY, loss_and_grads, rel_err, tiny_model, write_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.data.chat_templates import EMPTY_REASONING, get_chat_template
from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.merge import save_pretrained_merged
from tunesmith.export.ollama import plan_modelfile
from tunesmith.export.verify import DEFAULT_PROMPTS, verify_gguf
from tunesmith.models.expert_stacks import STACK_NAMES, is_4bit_stack
from tunesmith.models.loader import load
from tunesmith.models.registry import FAMILIES
from tunesmith.training.lora import get_peft_model

# (model type, tokenizer folder in ../shared/tokenizers, chat template to put on it (None: its own), config
# beyond _models.TINY / FAMILY_TINY). Gemma 3: six layers, so a global layer follows five sliding-window ones
# (window 16, shorter than the prompts). Gemma 2 stands on Gemma 3's vocabulary, Phi-3 on Llama 2's.
# Gemma 2's own chat template: like Gemma 3's, but it refuses a system message.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
CASES = [
    ("gemma3_text", "gemma3", None, {"num_hidden_layers": 6, "tie_word_embeddings": True}),
    ("gemma2", "gemma3", GEMMA2_TEMPLATE, {"num_hidden_layers": 2, "tie_word_embeddings": True}),
    ("phi3", "llama2", "phi-3", {}),
    ("qwen3_moe", "qwen3", None, {"tie_word_embeddings": True}),
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
    if template in CHAT_FAMILIES:
        tokenizer = get_chat_template(copy.deepcopy(tokenizer), template, map_eos_token=False)
    elif template:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = template
    # not the family's name: llama.cpp changes Phi-3 token attributes when the model's name says "phi3"
    folder = tmp_path_factory.mktemp("model")
    write_tiny_model(folder, family, tokenizer=tokenizer, dtype=torch.bfloat16, **extra)
    return family, tokenizer, folder


def _five_adamw_steps(model, tokenizer, device: str) -> list[float]:
    """Train ``model`` (in train mode afterwards) five AdamW steps on the chat-formatted CONVERSATION."""
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_tensors="pt")
    ids = ids["input_ids"].to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained(case):
    """The model (loaded in bf16, trained in fp32) with LoRA after five AdamW steps on one chat-formatted
    answer, and its losses."""
    family, _, folder = case
    model, tokenizer = load(folder, dtype=torch.bfloat16)
    assert model.config.model_type == family and model.dtype == torch.bfloat16
    model = model.float()
    model = get_peft_model(model, r=8, lora_alpha=16, use_gradient_checkpointing=False, random_state=0)
    losses = _five_adamw_steps(model, tokenizer, "cpu")
    model.eval()
    return model, tokenizer, losses


def test_loads_in_4bit_and_trains_qlora(case):
    family, tokenizer, folder = case
    ids = tokenizer("Hello, world!", return_tensors="pt")["input_ids"]
    moe = bool(FAMILIES[family].lora_parameters)
    quantized, _ = load(folder, load_in_4bit=True, dtype=torch.bfloat16 if moe else torch.float32)
    layer = quantized.model.layers[0]
    if moe:  # the experts' 3-D stacks are 4-bit too, not left in 16-bit
        assert all(is_4bit_stack(layer.mlp.experts, n) for n in STACK_NAMES)
        assert layer.mlp.experts.gate_up_proj.untyped_storage().nbytes() <= 4, "no 16-bit copy at rest"
    projections = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in layer.named_modules()}
    linear = [t for t in FAMILIES[family].lora_targets if t in projections]  # the MoE's are experts'
    assert linear and all(projections[t] == "Linear4bit" for t in linear), projections
    qlora = get_peft_model(quantized, r=8, use_gradient_checkpointing=False)
    if moe:  # the k-bit recipe's float32 cast leaves no full copy of a stack behind either
        experts = qlora.get_base_model().model.layers[0].mlp.experts
        experts = experts.get_base_layer() if hasattr(experts, "get_base_layer") else experts
        assert all(getattr(experts, n).untyped_storage().nbytes() <= 4 for n in STACK_NAMES)
    loss = qlora(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


def test_lora_adapts_the_seven_projections_and_the_loss_falls(trained, case):
    model, _, losses = trained
    family, config = FAMILIES[case[0]], model.peft_config["default"]
    if family.lora_parameters:  # attention layers, and every expert through its 3-D parameters
        assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert set(config.target_parameters) == set(family.lora_parameters)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert sum("experts" in n for n in trainable) == 4 * TINY["num_hidden_layers"], trainable  # A, B x 2
        assert not any(".mlp.gate." in n for n in trainable), "the router stays frozen"
    else:
        assert set(config.target_modules) == set(family.lora_targets)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] - 0.3, (
        losses
    )


@pytest.mark.gpu
@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16", "4bit"])
def test_trains_on_a_gpu_with_the_default_settings(case, four_bit):
    """On CUDA the default get_peft_model (the fast path where the family has it, smart checkpointing)
    trains each family, in bf16 and in 4-bit."""
    family, tokenizer, folder = case
    model, _ = load(folder, load_in_4bit=four_bit)
    assert next(model.parameters()).device.type == "cuda"
    model = get_peft_model(model, r=8, lora_alpha=16, random_state=0)
    losses = _five_adamw_steps(model, tokenizer, "cuda")
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0] - 0.3, (family, four_bit, losses)


def test_lora_dropout_on_the_experts_is_refused_with_what_to_do():
    model = tiny_model("qwen3_moe")
    with pytest.raises(TunesmithError, match="works without dropout only .* Set lora_dropout=0"):
        get_peft_model(model, r=8, lora_dropout=0.05, use_gradient_checkpointing=False)
    with pytest.raises(TunesmithError, match="gate_proj, up_proj and down_proj name the experts"):
        get_peft_model(
            tiny_model("qwen3_moe"), r=8, lora_dropout=0.05, target_modules=["q_proj", "down_proj"]
        )
    attention = get_peft_model(
        tiny_model("qwen3_moe"), r=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
    )
    assert not attention.peft_config["default"].target_parameters  # the way out the error names works


def test_qwen3_moe_experts_run_as_one_grouped_matmul_with_their_adapters():
    """transformers' ``grouped_mm`` experts (one grouped matrix product over the experts the tokens chose,
    its default, which tunesmith keeps) give the per-expert Python loop's loss and LoRA gradients."""
    model = get_peft_model(tiny_model("qwen3_moe"), r=8, use_gradient_checkpointing=False, random_state=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters as after training, so every LoRA gradient is non-zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    core = model.get_base_model()
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=generator)
    assert core.config._experts_implementation == "grouped_mm"
    grouped_loss, grouped = loss_and_grads(model, ids, ids)
    core.set_experts_implementation("eager")
    loop_loss, loop = loss_and_grads(model, ids, ids)
    assert abs(grouped_loss - loop_loss) < 1e-5
    experts = [n for n in loop if "experts" in n]
    assert experts and max(rel_err(grouped[n], loop[n]) for n in loop) < 1e-4


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


# q8_0 is written alike for every family: Gemma 2 checks f16 only (Gemma 3 checks q8_0 on its vocabulary).
METHODS = {"gemma2": ("f16",)}


def test_gguf_passes_verification_in_llama_cpp(trained, case, tmp_path, llama_cpp_works):
    model, tokenizer, _ = trained
    chat = tokenizer.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    # English, Chinese, Japanese, code, emoji, accents between the turn markers
    specials = tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXT}], tokenize=False, add_generation_prompt=True
    )
    for method in METHODS.get(case[0], tuple(TOP1)):
        path = save_pretrained_gguf(model, tmp_path / method, tokenizer, method)
        report = verify_gguf(path, (model, tokenizer), [chat, specials, DEFAULT_PROMPTS[2]], max_new_tokens=4)
        print(report.summary())
        assert report.tokenization_identical, method
        assert report.top1_agreement >= TOP1[method], method


def test_modelfile_template_renders_the_chat_template_in_go(case, go_render):
    family, tokenizer, _ = case
    template = plan_modelfile(tokenizer, required=True).template
    system = [{"role": "system", "content": "You are a careful doctor."}]  # Gemma 3 folds it into the turn
    for messages in (CONVERSATION[:1], CONVERSATION + CONVERSATION[:1], system + CONVERSATION):
        last_is_assistant = messages[-1]["role"] == "assistant"
        rendered = messages[1:] if family == "gemma2" and messages[0] == system[0] else messages
        jinja = tokenizer.apply_chat_template(  # Gemma 2 refuses a system message: Go leaves it out
            rendered,
            tokenize=False,
            add_generation_prompt=not last_is_assistant,
            continue_final_message=last_is_assistant,
        )
        adds_bos = tokenizer.bos_token and jinja.startswith(tokenizer.bos_token)  # Qwen3 has none
        bos = tokenizer.bos_token if adds_bos else ""  # llama.cpp adds BOS
        assert bos + go_render(template, messages) == jinja


@pytest.mark.parametrize(
    "family, config, says",
    [
        ("gemma2", {"query_pre_attn_scalar": 32}, "1/sqrt(32)"),  # head size 16: llama.cpp uses 1/sqrt(16)
        ("gemma3_text", {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ("qwen3_moe", {"norm_topk_prob": False}, "norm_topk_prob=false"),
        ("qwen3_moe", {"mlp_only_layers": [1]}, "a plain MLP instead of experts"),
    ],
)
def test_gguf_export_refuses_what_llama_cpp_would_compute_differently(family, config, says, tmp_path):
    model = tiny_model(family, **config)
    with pytest.raises(TunesmithError, match=re.escape(says)):
        save_pretrained_gguf(model, tmp_path / "out", object(), "f16")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_multimodal_gemma3_checkpoint_loads_as_its_text_model(tmp_path, chatml_bpe_tokenizer):
    import transformers

    text = transformers.Gemma3TextConfig(**{**TINY, **FAMILY_TINY["gemma3_text"], "vocab_size": 512})
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28
    )
    config = transformers.Gemma3Config(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=511,
        boi_token_index=509,
        eoi_token_index=510,
    )
    torch.manual_seed(0)
    full = transformers.Gemma3ForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path)
    chatml_bpe_tokenizer.save_pretrained(tmp_path)
    model, _ = load(tmp_path, dtype=torch.float32)
    assert model.config.model_type == "gemma3_text"
    assert not any("vision" in name for name, _ in model.named_parameters())  # the text model alone
    ids = torch.tensor([[1, 5, 9, 42, 7, 100]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, full(input_ids=ids).logits)


def test_train_on_responses_only_finds_the_answer_in_the_familys_template(case):
    import datasets

    from tunesmith.data.masking import train_on_responses_only

    _, tokenizer, _ = case
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    masked = train_on_responses_only(datasets.Dataset.from_dict({"text": [text]}), tokenizer=tokenizer)
    kept = [t for t, label in zip(masked[0]["input_ids"], masked[0]["labels"], strict=True) if label != -100]
    # Qwen3 writes an empty reasoning block before an answer: it is the answer's start, and trained
    assert tokenizer.decode(kept).strip().removeprefix(EMPTY_REASONING).startswith(CONVERSATION[1]["content"])
    assert CONVERSATION[0]["content"] not in tokenizer.decode(kept)
