"""A random-init model folder of a named family's real shape, for benchmarks of families other than the
anchors' Llama (``anchor_bench.py prep``). Speed does not depend on the weights' values.

usage:  python3 bench/random_model.py SHAPE DIR      (SHAPE: one of SHAPES; bf16 safetensors, on the GPU)
"""

import sys

# The released checkpoints' config.json values that set the compute (sizes, heads, vocabulary, rope).
_QWEN3 = dict(model_type="qwen3", vocab_size=151936, num_hidden_layers=36, num_attention_heads=32,
              num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0,
              rms_norm_eps=1e-6)  # fmt: skip
# Qwen3-30B-A3B: 128 experts of width 768, 8 chosen per token.
_QWEN3_30B_A3B = dict(_QWEN3, model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                      num_key_value_heads=4, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                      norm_topk_prob=True, tie_word_embeddings=False)  # fmt: skip
SHAPES = {
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
    # Gemma-3-4B's text model: five local layers (window 1,024) to one global, head size 256
    "gemma3-4b": dict(
        model_type="gemma3_text",
        vocab_size=262208,
        hidden_size=2560,
        intermediate_size=10240,
        num_hidden_layers=34,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=1024,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),  # fmt: skip
    # Qwen3-30B-A3B's layers, 12 of its 48: the whole model is 61 GB in bf16 (4-bit leaves the experts in 16
    # bits), more than the device's 64 GiB disk holds beside anything else; a ratio compares per-layer speed.
    "qwen3-30b-a3b-12l": dict(_QWEN3_30B_A3B, num_hidden_layers=12),
}


def make(shape: str, folder: str) -> None:
    """Write a random-init ``shape`` model into ``folder`` (bf16)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(SHAPES[shape])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    print(
        f"{shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters in {folder}", flush=True
    )


if __name__ == "__main__":
    make(sys.argv[1], sys.argv[2])
