"""``with decode_kernels(model):`` tunesmith's fused decode modules in place of a model's own, for a
CUDA-graph recording.

A recorded graph keeps the kernels it saw, not the modules, so the swap lasts only while the one-token step
is recorded: afterwards the model is exactly as it was (training, merging and saving see no difference), and
every replay still runs the fused kernels. Swapped, in a family with tunesmith's fast path:
- the RMSNorms (``x * rsqrt(mean(x^2) + eps) * w``), one Triton kernel instead of seven elementwise ones,
  wherever a module holds one as a registered child (the fast path's norms are fused already and stay);
- each decoder layer's attention and SwiGLU MLP, by ``decode_modules``' one-token versions (in-place RoPE,
  no copied key/value heads, LoRA adapters that share an input in one pair of launches).
NF4 layers keep bitsandbytes' one-row kernel: a Triton one measured 2.6x slower (bench/NOTES.md, decode).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.generation.decode_modules import (
    DecodeAttention,
    DecodeMLP,
    can_decode_attention,
    can_decode_mlp,
)
from tunesmith.models.registry import family_of
from tunesmith.models.unwrap import base_model_of

__all__ = ["decode_kernels"]

Swap = tuple[nn.Module, str, nn.Module, nn.Module]  # (holder, child name, original, replacement)


def _is_model_rms_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and not isinstance(module, FastRMSNorm)


def _norm_swaps(model: nn.Module, weight_offset: float) -> list[Swap]:
    return [
        (holder, name, module, FastRMSNorm(module, weight_offset))
        for holder in list(model.modules())
        for name, module in list(holder._modules.items())
        if module is not None and _is_model_rms_norm(module)
    ]


def _layer_swaps(model: nn.Module) -> list[Swap]:
    swaps = []
    for layer in getattr(getattr(base_model_of(model), "model", None), "layers", ()):
        if can_decode_attention(layer.self_attn):
            swaps.append((layer, "self_attn", layer.self_attn, DecodeAttention(layer.self_attn)))
        if can_decode_mlp(layer.mlp):
            swaps.append((layer, "mlp", layer.mlp, DecodeMLP(layer.mlp)))
    return swaps


@contextmanager
def decode_kernels(model: nn.Module, layers: bool = True) -> Iterator[int]:
    """Swap in the decode modules for the ``with`` block (yields how many modules changed); always undone.
    ``layers=False`` swaps the norms alone (the fallback when a decode module cannot be recorded)."""
    family = family_of(getattr(base_model_of(model).config, "model_type", "") or "")
    swaps: list[Swap] = []
    if family is not None and family.fast_path:
        swaps = _norm_swaps(model, family.norm_weight_offset)
        if layers:  # after the norms: a DecodeAttention reads the swapped head norms
            swaps += _layer_swaps(model)
    for holder, name, _, replacement in swaps:
        holder._modules[name] = replacement
    try:
        yield len(swaps)
    finally:
        for holder, name, original, _ in reversed(swaps):
            holder._modules[name] = original
