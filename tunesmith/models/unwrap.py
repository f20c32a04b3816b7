"""The transformers model inside whatever wraps it (a PEFT ``PeftModel``), for code that needs its config,
its decoder layers or its tensors."""

from __future__ import annotations

from torch import nn

__all__ = ["base_model_of", "without_param_wrappers"]


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA layers still in place), or ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def without_param_wrappers(module: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """``module`` without the PEFT ``ParamWrapper`` s around it (LoRA on its parameters through
    ``target_parameters``: one wrapper per adapted parameter, nested), and those wrappers, outermost
    first."""
    from peft.tuners.lora import ParamWrapper

    wrappers = []
    while isinstance(module, ParamWrapper):
        wrappers.append(module)
        module = module.base_layer
    return module, wrappers
