"""``with decode_kernels(model):`` tunesmith's kernels in place of a model's own, for a CUDA-graph recording.

A recorded graph keeps the kernels it saw, not the modules, so the swap lasts only while the one-token step
is recorded: afterwards the model is exactly as it was (training, merging and saving see no difference), and
every replay still runs the fused kernels. Swapped, where the model has them:
- NF4 linear layers (bitsandbytes ``Linear4bit``): ``kernels.nf4_gemv`` reads the packed bytes once, where
  bitsandbytes' one-row kernel streams them at under 1 TB/s and decodes the scales in a separate pass;
- the RMSNorms of a family with tunesmith's fast path (``x * rsqrt(mean(x^2) + eps) * w``): one Triton
  kernel instead of seven elementwise ones.
Every module that refers to a swapped layer sees the swap, also the fast path's unregistered ``base_layer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.kernels.nf4 import is_nf4_weight
from tunesmith.kernels.nf4_gemv import MAX_ROWS, nf4_gemv
from tunesmith.models.registry import family_of
from tunesmith.models.unwrap import base_model_of

__all__ = ["decode_kernels", "Nf4DecodeLinear", "NF4_KERNEL"]

# Whether NF4 layers take tunesmith's kernel; bench/bench_decode.py's "tsk" variants turn it on to measure it
# against bitsandbytes' own one-row kernel (bench/NOTES.md has the outcome).
NF4_KERNEL = False


class Nf4DecodeLinear(nn.Module):
    """A bitsandbytes NF4 ``Linear4bit`` whose few-row, no-grad calls go through ``nf4_gemv``; any other call
    (a prompt, a training step) is the layer's own."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.__dict__["base_layer"] = base_layer  # unregistered: the state dict keeps its keys

    @property
    def weight(self) -> torch.Tensor:
        """The layer's ``Params4bit`` weight (PEFT reads it through here)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The layer's bias."""
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``x @ W.T + b`` in the layer's compute dtype, returned in ``x``'s dtype."""
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or torch.is_grad_enabled() or not x.is_cuda:
            return self.base_layer(x, *args, **kwargs)
        compute = getattr(self.base_layer, "compute_dtype", None) or x.dtype
        out = nf4_gemv(x.to(compute), self.base_layer.weight)
        if self.base_layer.bias is not None:
            out = out + self.base_layer.bias.to(out.dtype)
        return out.to(x.dtype)


def _twin(module: nn.Module, llama_norms: bool) -> nn.Module | None:
    """The decode-kernel stand-in for ``module``, or None to leave it."""
    weight = getattr(module, "weight", None)
    nf4 = type(module).__name__ == "Linear4bit" and weight is not None and is_nf4_weight(weight)
    if NF4_KERNEL and nf4:
        return Nf4DecodeLinear(module)
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
