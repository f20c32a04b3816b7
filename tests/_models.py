"""The helpers every test folder shares: tiny random-init models, LoRA on them, and the error measure.

Importable as ``_models`` from any test file (``pythonpath = ["tests"]`` in pyproject.toml's pytest section).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.models.registry import LLAMA_STYLE_TARGETS, family_of

# Two layers, grouped-query attention, hidden 64: small enough for CPU, and every width a multiple of 32 so
# each GGUF type (q8_0, q4_0 blocks of 32) can store it.
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
# Gemma's defaults are its real sizes (head size 256): a tiny one needs its own, and llama.cpp scales queries
# by 1/sqrt(head size) outside the 27B models, so query_pre_attn_scalar is the head size.
FAMILY_TINY = {
    "gemma2": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=16),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=16),
    "phi3": dict(pad_token_id=None, original_max_position_embeddings=512),  # its default pad id is 32000
    # four experts of width 32, two chosen per token (their weights renormalised), in every layer
    "qwen3_moe": dict(
        head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True
    ),  # as the real checkpoints (its config default is False)
}
# Odd sizes for the fast-path tests: head size 12, MLP width 80 and 97 vocabulary columns leave partial
# blocks in every kernel.
ODD = dict(vocab_size=97, hidden_size=48, intermediate_size=80, max_position_embeddings=64)
# Per-dtype tolerances on rel_err(kernel, reference): float32 kernels agree to rounding; bf16 outputs are
# rounded once more (and Triton's interpreter truncates float32 -> bf16 instead of rounding to nearest).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
DTYPES = [torch.float32, torch.bfloat16]
# What tokenization checks feed both tokenizers: English, numbers, code, Chinese, Japanese, emoji, accents.
TEXT = (
    "Hello world! The year 2024 had 12345678 seconds.\n\n  Indented  code:\n\tdef f(x):\n        return x**2  # sq\n"
    "你好，世界！这是一个测试。日本語のテキスト。 Emoji: 🤖🎉👍🏽 Ünïcödé café naïve — “quotes” it's we'll I'M"
)


def tiny_model(family: str = "llama", *, tokenizer=None, seed: int = 0, **config):
    """A random-init causal LM of a transformers ``family`` (seed ``seed``, eval mode): ``TINY`` sizes,
    changed by ``config`` (and ``FAMILY_TINY``; Gemma's norm weights random); with a ``tokenizer``, its vocabulary size and bos/eos ids go into the config."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
        "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
    }[family]
    config = {**FAMILY_TINY.get(family, {}), **config}
    if tokenizer is not None:
        config = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, **config)  # fmt: skip
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**TINY, **config})).eval()
    if family.startswith("gemma"):  # its norms start at 0 (Gemma multiplies by 1 + w): make them matter
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.normal_(0.0, 0.2)
    return model


def write_tiny_model(folder: Path, family: str = "llama", *, tokenizer=None, dtype=None, **config) -> Path:
    """``tiny_model(family, tokenizer=tokenizer, **config)`` saved into ``folder`` (in ``dtype``, if given),
    with the tokenizer beside it: a model folder as ``load`` and ``from_pretrained`` read it."""
    model = tiny_model(family, tokenizer=tokenizer, **config)
    (model if dtype is None else model.to(dtype)).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def with_lora(model, r: int = 8, seed: int = 1):
    """``model`` in a PEFT LoRA on every projection its family adapts (Llama's seven; Phi-3's four fused; a
    Qwen3-MoE's attention and experts) whose B matrices are random (as after training), so merged weights differ from the base and every LoRA
    gradient is non-zero. The mode (train or eval) stays the model's."""
    from peft import LoraConfig, get_peft_model

    training = model.training
    family = family_of(getattr(model.config, "model_type", ""))
    targets = list(family.lora_targets if family is not None else LLAMA_STYLE_TARGETS)
    experts = list(family.lora_parameters) if family is not None else []  # a mixture of experts' 3-D weights
    config = LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=targets, target_parameters=experts or None
    )
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.train(training)


def loss_and_grads(model, input_ids, labels, attention_mask=None):
    """One forward/backward: the loss and every trainable parameter's gradient, by name."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach().float(), grads


def kept_by_first_layer(model, input_ids):
    """(loss and gradients of one step on ``input_ids`` as labels, {storage: bytes} that the first decoder
    layer's forward saved for backward, the parameters themselves left out: they cost nothing more)."""
    layer = model.get_base_model().model.layers[0]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept, inside = {}, []
    hooks = [
        layer.register_forward_pre_hook(lambda *_: inside.append(True)),
        layer.register_forward_hook(lambda *_: inside.clear()),
    ]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if inside and storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = loss_and_grads(model, input_ids, input_ids)
    for hook in hooks:
        hook.remove()
    return result, kept


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (``b`` is the reference)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@torch.no_grad()
def greedy_divergence(model, prompt: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor):
    """Where two greedy continuations of ``prompt`` (1, P) part, judged by ``model``: None when they are
    the same; else ``(index, gap in logit standard deviations, gap, top logit)``: the first differing new
    token, and how far our token's logit was below the reference's there. A near-tie is the only excuse."""
    ours, theirs = ours.flatten().tolist(), theirs.flatten().tolist()
    index = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if index is None:
        inf = float("inf")
        return None if len(ours) == len(theirs) else (min(len(ours), len(theirs)), inf, inf, 0.0)
    prefix = torch.cat([prompt.flatten().cpu(), torch.tensor(theirs[:index], dtype=torch.long)])[None]
    logits = model(input_ids=prefix.to(model.device)).logits[0, -1].float()
    gap = (logits[theirs[index]] - logits[ours[index]]).item()
    return index, gap / logits.std().item(), gap, logits.max().item()
