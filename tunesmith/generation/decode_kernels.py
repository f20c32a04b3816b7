"""``with decode_kernels(model):`` tunesmith's fused kernels in place of a model's own, for a CUDA-graph
recording.

A recorded graph keeps the kernels it saw, not the modules, so the swap lasts only while the one-token step
is recorded: afterwards the model is exactly as it was (training, merging and saving see no difference), and
every replay still runs the fused kernels. Swapped: the RMSNorms of a family with tunesmith's fast path
(``x * rsqrt(mean(x^2) + eps) * w``), one Triton kernel instead of seven elementwise ones, wherever a module
holds one as a registered child (the fast path's norms are fused already and stay). NF4 layers keep
bitsandbytes' one-row kernel: a Triton one measured 2.6x slower (bench/NOTES.md, decode).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.models.registry import family_of
from tunesmith.models.unwrap import base_model_of

__all__ = ["decode_kernels"]


def _is_plain_llama_norm(module: nn.Module) -> bool:
    return type(module).__name__.endswith("RMSNorm") and not isinstance(module, FastRMSNorm)


@contextmanager
def decode_kernels(model: nn.Module) -> Iterator[int]:
    """Swap in the decode kernels for the ``with`` block (yields how many norms changed); always undone."""
    family = family_of(getattr(base_model_of(model).config, "model_type", "") or "")
    swaps = []
    if family is not None and family.fast_path:
        for holder in list(model.modules()):
            for name, module in list(holder._modules.items()):
                if module is not None and _is_plain_llama_norm(module):
                    swaps.append((holder, name, module))
                    holder._modules[name] = FastRMSNorm(module)
    try:
        yield len(swaps)
    finally:
        for holder, name, module in reversed(swaps):
            holder._modules[name] = module
