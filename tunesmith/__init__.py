"""tunesmith: fast, memory-light, beginner-proof LoRA/QLoRA fine-tuning with verified GGUF + Ollama export.

Public names are imported lazily so that ``import tunesmith`` and the CLI start fast.
"""

import os

# No usage telemetry from the libraries underneath (TRL pings the hub when a trainer is created). Set
# before any of them is imported through tunesmith; a user's own setting wins.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tunesmith._lazy import lazy_exports  # noqa: E402
from tunesmith._version import __version__  # noqa: E402

_PUBLIC = {
    "FastLanguageModel": "tunesmith.api.fast_language_model",
    "is_bfloat16_supported": "tunesmith.models.device",
    "chat": "tunesmith.generation.chat",
    "PromptTemplate": "tunesmith.data.prompt_template",
    "SFTTrainer": "tunesmith.training.trainer",
    "SFTConfig": "tunesmith.training.arguments",
    "TrainingArguments": "tunesmith.training.arguments",
    "DPOTrainer": "tunesmith.training.preference",
    "DPOConfig": "tunesmith.training.method_arguments",
    "ORPOTrainer": "tunesmith.training.orpo",
    "ORPOConfig": "tunesmith.training.orpo",
    "GRPOTrainer": "tunesmith.training.grpo",
    "GRPOConfig": "tunesmith.training.method_arguments",
    "get_chat_template": "tunesmith.data.chat_templates",
    "train_on_responses_only": "tunesmith.data.masking",
    "standardize_sharegpt": "tunesmith.data.sharegpt",
    "TunesmithError": "tunesmith.errors",
}

_names, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
__all__ = [*_names, "__version__"]
