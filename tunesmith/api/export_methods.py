"""Unsloth-style export methods on a model instance: ``model.save_pretrained_merged(...)`` and
``model.save_pretrained_gguf(...)``.

They are bound to the one instance with ``types.MethodType``; no library class is changed.
"""

from __future__ import annotations

import types

import torch

from tunesmith.export.gguf_constants import DEFAULT_QUANT

__all__ = ["attach_export_methods", "EXPORT_METHODS"]

EXPORT_METHODS = ("save_pretrained_merged", "save_pretrained_gguf")


def _save_pretrained_merged(
    self, save_directory, tokenizer=None, save_method: str = "merged_16bit", **kwargs
):
    """Save this model with LoRA merged in (``merged_16bit``) or its adapter alone (``lora``); see
    :func:`tunesmith.export.merge.save_pretrained_merged`."""
    from tunesmith.export.merge import save_pretrained_merged

    return save_pretrained_merged(self, save_directory, tokenizer, save_method, **kwargs)


def _save_pretrained_gguf(
    self, save_directory, tokenizer=None, quantization_method: str = DEFAULT_QUANT, **kwargs
):
    """Save this model as ``<dir>/<name>.<QUANT>.gguf`` plus an Ollama Modelfile; see
    :func:`tunesmith.export.gguf.save_pretrained_gguf`."""
    from tunesmith.export.gguf import save_pretrained_gguf

    return save_pretrained_gguf(self, save_directory, tokenizer, quantization_method, **kwargs)


def attach_export_methods(model: torch.nn.Module) -> torch.nn.Module:
    """Bind ``save_pretrained_merged`` and ``save_pretrained_gguf`` to ``model`` (this instance only);
    returns ``model``."""
    for name, function in (
        ("save_pretrained_merged", _save_pretrained_merged),
        ("save_pretrained_gguf", _save_pretrained_gguf),
    ):
        object.__setattr__(model, name, types.MethodType(function, model))
    return model
