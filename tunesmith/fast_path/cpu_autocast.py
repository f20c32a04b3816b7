"""Training on a CPU under bf16 autocast without recasting frozen weights: ``cpu_autocast_training``.

Autocast keeps the casts of weights that train; a frozen float32 weight is cast to bf16 again at every use.
A PEFT ``lora.Linear`` also casts its input twice (once for the base layer, once for ``lora_A``), then
scales the adapter's output and adds it in two more passes, and backward retraces each of those steps.
Inside ``cpu_autocast_training`` each such layer computes the same sum through ``LoRAProjectionsFunction``
over one bf16 copy of its frozen weight made for the run, with the input cast once and ``s (x A^T) B^T``
added into the base product in place; the fused output head gets a bf16 copy of its weight likewise.
On the way out the layers go back and the copies are dropped.

The layer in the model during the run is a ``CpuLoRALinear`` that shares the PEFT layer's attribute
dictionary: the same parameters, adapters and settings (a change through either is a change of both). PEFT
finds its layers by type when it saves or loads an adapter (a checkpoint during the run), so the stand-in
is one of them: a subclass of ``lora.Linear`` that overrides ``forward`` alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn

from tunesmith.fast_path.modules import FusedLMHead, projection_of
from tunesmith.kernels.lora_linear import LoRAProjectionsFunction
from tunesmith.kernels.nf4 import is_nf4_weight

__all__ = ["CpuLoRALinear", "cpu_autocast_training"]

_COPY = "_tunesmith_frozen_copy"  # the bf16 weight, in the layer's attribute dictionary during the run


class CpuLoRALinear(LoraLinear):
    """PEFT's ``lora.Linear`` that under CPU autocast in its frozen copy's dtype computes base + adapter in
    one autograd function over that copy (see the module docstring); PEFT's own forward otherwise."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """PEFT's result (see the class docstring)."""
        copy = self.__dict__.get(_COPY)
        projection = projection_of(self) if copy is not None and not args and not kwargs else None
        if (
            projection is None
            or x.device.type != "cpu"
            or not torch.is_autocast_enabled("cpu")
            or torch.get_autocast_dtype("cpu") != copy.dtype
        ):
            return super().forward(x, *args, **kwargs)
        bias = None if projection.bias is None else projection.bias.to(copy.dtype)
        with torch.autocast("cpu", enabled=False):
            (out,) = LoRAProjectionsFunction.apply(
                x.to(copy.dtype), [projection.scaling], copy, bias, projection.lora_a, projection.lora_b
            )
        return out

    @classmethod
    def sharing(cls, layer: LoraLinear) -> CpuLoRALinear:
        """A ``CpuLoRALinear`` whose attribute dictionary is ``layer``'s own (no copy)."""
        alias = object.__new__(cls)
        object.__setattr__(alias, "__dict__", layer.__dict__)
        return alias


def _frozen_dense(weight: torch.Tensor) -> bool:
    return not weight.requires_grad and not is_nf4_weight(weight) and weight.device.type == "cpu"


@contextmanager
def cpu_autocast_training(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """While inside, a CPU model trained under autocast in ``dtype`` keeps one ``dtype`` copy of each frozen
    weight its LoRA layers and fused head use (see the module docstring). ``dtype`` None (no autocast) or a
    model on a GPU: nothing changes."""
    swaps, heads = [], []
    if dtype is not None:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                projection = projection_of(child) if type(child) is LoraLinear else None
                if projection is not None and _frozen_dense(projection.weight):
                    child.__dict__[_COPY] = projection.weight.detach().to(dtype)
                    setattr(parent, name, CpuLoRALinear.sharing(child))
                    swaps.append((parent, name, child))
                elif isinstance(child, FusedLMHead) and _frozen_dense(child.weight):
                    child.frozen_copy = child.weight.detach().to(dtype)
                    heads.append(child)
    try:
        yield
    finally:
        for parent, name, child in swaps:
            setattr(parent, name, child)
            child.__dict__.pop(_COPY, None)
        for head in heads:
            head.frozen_copy = None
