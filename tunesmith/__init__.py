"""tunesmith: fast, memory-light, beginner-proof LoRA/QLoRA fine-tuning with verified GGUF + Ollama export.

Public names are imported lazily so that ``import tunesmith`` and the CLI start fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "FastLanguageModel": "tunesmith.models.fast_language_model",
    "is_bfloat16_supported": "tunesmith.models.device",
    "chat": "tunesmith.models.chat",
    "PromptTemplate": "tunesmith.data.prompt_template",
    "SFTTrainer": "tunesmith.training.trainer",
    "SFTConfig": "tunesmith.training.arguments",
    "TrainingArguments": "tunesmith.training.arguments",
    "get_chat_template": "tunesmith.data.chat_templates",
    "train_on_responses_only": "tunesmith.data.masking",
    "standardize_sharegpt": "tunesmith.data.sharegpt",
    "TunesmithError": "tunesmith.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")


def __dir__():
    return __all__
