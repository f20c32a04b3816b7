"""The model hyperparameters of a GGUF file (``{arch}.*`` keys), and the facts llama.cpp assumes instead of
reading them.

Every key goes through ``gguf.GGUFWriter``'s typed setters. Beyond the Llama keys (sizes, heads, norm
epsilon, rope), Gemma adds: attention and final-logit soft-capping (Gemma 2), the sliding-window width of
its local layers, and (Gemma 3) the rope base of those local layers. llama.cpp does not read everything a
transformers config can say: for ``gemma2`` / ``gemma3`` it places the local layers itself (every 2nd / 6th
layer global), scales queries by 1/sqrt(head size) except in the 27B models (1/sqrt(hidden / heads)), and
runs Gemma 3's local layers at rope base 10,000 without scaling; for ``qwen3moe`` every layer has experts,
whose chosen weights it renormalises. :func:`check_llama_cpp_assumptions`
refuses, before any byte is written, a config that differs from those assumptions, since llama.cpp would
compute another model from that file.
"""

from __future__ import annotations

import math

import gguf

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_constants import ArchInfo
from tunesmith.export.gguf_names import rope_parameters, rope_theta
from tunesmith.models.registry import head_dim_of

__all__ = ["add_hparams", "check_llama_cpp_assumptions", "SLIDING", "FULL"]

SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types values
# llama.cpp's layout of local (sliding-window) layers: one global layer in every N, the last of each group.
_SWA_PERIOD = {gguf.MODEL_ARCH.GEMMA2: 2, gguf.MODEL_ARCH.GEMMA3: 6}
# llama.cpp's 27B Gemma models, recognised by layer count, scale queries by 1/sqrt(hidden / heads).
_LAYERS_27B = {gguf.MODEL_ARCH.GEMMA2: 46, gguf.MODEL_ARCH.GEMMA3: 62}
_GEMMA3_LOCAL_ROPE_BASE = 10000.0


def _layer_types(config) -> list[str]:
    return list(getattr(config, "layer_types", None) or [FULL] * config.num_hidden_layers)


def _has_sliding_layers(config) -> bool:
    return SLIDING in _layer_types(config) and bool(getattr(config, "sliding_window", None))


def add_hparams(
    writer: gguf.GGUFWriter, arch: ArchInfo, config, n_vocab: int, context_length: int | None
) -> None:
    """Every ``{arch}.*`` key llama.cpp reads for this model."""
    n_head = config.num_attention_heads
    head_dim = head_dim_of(config)
    writer.add_context_length(int(context_length or config.max_position_embeddings))
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    if getattr(config, "num_experts", None):  # mixture of experts: llama.cpp sizes each expert from these
        writer.add_expert_count(int(config.num_experts))
        writer.add_expert_used_count(int(config.num_experts_per_tok))
        writer.add_expert_feed_forward_length(int(config.moe_intermediate_size))
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_vocab)
    rope = rope_parameters(config)
    rotary = rope.get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) or 1.0
    writer.add_rope_dimension_count(int(head_dim * rotary))
    writer.add_rope_freq_base(rope_theta(config))
    if head_dim * n_head != config.hidden_size or getattr(config, "query_pre_attn_scalar", None):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _add_rope_scaling(writer, rope)
    if getattr(config, "original_max_position_embeddings", None):  # Phi-3: where long-context rope starts
        writer.add_rope_scaling_orig_ctx_len(int(config.original_max_position_embeddings))
    _add_window_keys(writer, arch, config)


def _add_rope_scaling(writer: gguf.GGUFWriter, rope: dict) -> None:
    kind = rope.get("rope_type")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if rope.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    # "llama3" scaling travels as the rope_freqs tensor (see gguf_names); "default" needs nothing.


def _add_window_keys(writer: gguf.GGUFWriter, arch: ArchInfo, config) -> None:
    """Soft-capping, the sliding window and the local layers' rope base, where the config has them (Phi-3:
    a window on every layer, 0 for none, which llama.cpp requires)."""
    if getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if _has_sliding_layers(config):
        writer.add_sliding_window(int(config.sliding_window))
        local = rope_parameters(config, SLIDING)
        if local.get("rope_theta"):
            writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    elif arch.arch == gguf.MODEL_ARCH.PHI3:
        writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))


def _refuse(config, what: str, arch: ArchInfo) -> TunesmithError:
    return TunesmithError(
        f"GGUF export of this {config.model_type} model would not compute the same model in llama.cpp: "
        f"{what}. llama.cpp's '{arch.name}' architecture assumes otherwise and has no key to say it. Save a "
        "merged folder instead (save_pretrained_merged) and serve it with transformers."
    )


def _check_experts(config, arch: ArchInfo) -> None:
    """llama.cpp's ``qwen3moe`` routes every layer through the experts and renormalises the chosen experts'
    weights to sum to 1."""
    if getattr(config, "mlp_only_layers", None) or int(getattr(config, "decoder_sparse_step", 1)) != 1:
        raise _refuse(config, "some of its layers have a plain MLP instead of experts", arch)
    if not getattr(config, "norm_topk_prob", True):
        raise _refuse(
            config, "it does not renormalise the chosen experts' weights (norm_topk_prob=false)", arch
        )


def check_llama_cpp_assumptions(config, arch: ArchInfo) -> None:
    """Refuse a config that llama.cpp's architecture would read differently (see the module docstring)."""
    if arch.arch == gguf.MODEL_ARCH.QWEN3MOE:
        _check_experts(config, arch)
    period = _SWA_PERIOD.get(arch.arch)
    if period is None:
        return
    types = _layer_types(config)
    expected = [FULL if (i + 1) % period == 0 else SLIDING for i in range(len(types))]
    if getattr(config, "sliding_window", None) and types != expected:
        raise _refuse(config, f"its layer_types are {types}, not one global layer in every {period}", arch)
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar:
        is_27b = config.num_hidden_layers == _LAYERS_27B[arch.arch]
        cpp = config.hidden_size / config.num_attention_heads if is_27b else head_dim_of(config)
        if not math.isclose(float(scalar), float(cpp)):
            raise _refuse(
                config, f"queries are scaled by 1/sqrt({scalar}), llama.cpp would use 1/sqrt({cpp:g})", arch
            )
    if arch.arch == gguf.MODEL_ARCH.GEMMA3 and _has_sliding_layers(config):
        local = rope_parameters(config, SLIDING)
        base = float(local.get("rope_theta") or _GEMMA3_LOCAL_ROPE_BASE)
        if base != _GEMMA3_LOCAL_ROPE_BASE or local.get("rope_type", "default") != "default":
            raise _refuse(
                config,
                f"its sliding-window layers use rope {local}, llama.cpp uses base 10000 without scaling",
                arch,
            )
