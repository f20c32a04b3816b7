"""Helpers for the export tests: tiny random models and LoRA wrapping."""

from __future__ import annotations

import torch

LLAMA_STYLE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_model(kind: str, vocab_size: int, **overrides):
    """A random-init 2-layer model (hidden 64) of a transformers family, with a fixed seed."""
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    common.update(overrides)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[kind]
    return model_cls(config_cls(**common)).eval()


def with_lora(model, seed: int = 1):
    """Wrap ``model`` in a PEFT LoRA (r=8 on all projections) whose B matrices are non-zero, as after training."""
    import peft

    lora = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=LLAMA_STYLE))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return lora.eval()
