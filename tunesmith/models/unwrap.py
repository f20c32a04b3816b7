"""The transformers model inside whatever wraps it (a PEFT ``PeftModel``), for code that needs its config,
its decoder layers or its tensors."""

from __future__ import annotations

from torch import nn

__all__ = ["base_model_of"]


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers still in place), or ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
