"""``with decode_kernels(model):`` tunesmith's fused kernels in place of a model's own, for a CUDA-graph
recording.

A recorded graph keeps the kernels it saw, not the modules, so the swap lasts only while the one-token step
is recorded: afterwards the model is exactly as it was (training, merging and saving see no difference), and
every replay still runs the fused kernels. Swapped: the RMSNorms of a family with tunesmith's fast path
(``x * rsqrt(mean(x^2) + eps) * w``), one Triton kernel instead of seven elementwise ones. Every module that
refers to a swapped norm sees the swap, also the fast path's unregistered ``base_layer``. NF4 layers keep
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


def _twin(module: nn.Module, llama_norms: bool) -> nn.Module | None:
    """The decode-kernel stand-in for ``module``, or None to leave it."""
    if llama_norms and type(module).__name__.endswith("RMSNorm") and not isinstance(module, FastRMSNorm):
        return FastRMSNorm(module)
    return None


def _references(model: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module, bool]]:
    """Every ``(holder, name, module, registered)`` under ``model``, unregistered ``base_layer``s included."""
    seen, stack = set(), [model]
    while stack:
        holder = stack.pop()
        if id(holder) in seen:
            continue
        seen.add(id(holder))
        held = [(n, m, True) for n, m in holder._modules.items() if m is not None]
        held += [(n, m, False) for n, m in vars(holder).items() if isinstance(m, nn.Module)]
        for name, module, registered in held:
            yield holder, name, module, registered
            stack.append(module)


@contextmanager
def decode_kernels(model: nn.Module) -> Iterator[int]:
    """Swap in the decode kernels for the ``with`` block (yields how many places changed); always undone."""
    family = family_of(getattr(base_model_of(model).config, "model_type", "") or "")
    llama_norms = family is not None and family.fast_path
    twins: dict[int, nn.Module] = {}
    swaps = []
    for holder, name, module, registered in list(_references(model)):
        if id(module) not in twins:
            twins[id(module)] = _twin(module, llama_norms)
        twin = twins[id(module)]
        if twin is not None:
            swaps.append((holder, name, module, registered))
            if registered:
                holder._modules[name] = twin
            else:
                holder.__dict__[name] = twin
    try:
        yield len(swaps)
    finally:
        for holder, name, module, registered in reversed(swaps):
            if registered:
                holder._modules[name] = module
            else:
                holder.__dict__[name] = module
