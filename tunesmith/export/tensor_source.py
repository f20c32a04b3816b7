"""``TensorSource``: one tensor of a model to be written, named as in a transformers state dict and computed
only when the writer reaches it (so a merged model never needs a full copy in memory)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TensorSource"]


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the merged model, named as in a transformers state dict, computed on demand."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
