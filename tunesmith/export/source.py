"""Open what ``tunesmith export`` / ``verify`` are pointed at: a model (alias, folder, ``.gguf``, hub id)
through the model loader, or a saved LoRA adapter folder on top of its base model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError

__all__ = ["load_for_export"]

# peft.utils.CONFIG_NAME, spelled here so that telling an adapter folder apart does not import peft.
ADAPTER_CONFIG = "adapter_config.json"


def _adapter_base(folder: Path) -> str:
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise TunesmithError(
            f"The adapter folder {folder} does not say which base model it belongs to ({ADAPTER_CONFIG} "
            "has no base_model_name_or_path). Export from the training session instead: "
            "model.save_pretrained_gguf(folder, tokenizer)."
        )
    return base


def load_for_export(model_name: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` for a model name/folder, or base model + LoRA for an adapter folder."""
    from tunesmith.models.loader import load

    folder = Path(model_name)
    if not (folder / ADAPTER_CONFIG).is_file():
        return load(os.fspath(model_name), dtype=dtype)
    from peft import PeftModel

    model, tokenizer = load(_adapter_base(folder), dtype=dtype)
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return PeftModel.from_pretrained(model, folder), tokenizer
