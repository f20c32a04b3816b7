"""``FastLanguageModel``: the entry point users of the reference tutorial already know.

model, tokenizer = FastLanguageModel.from_pretrained("smollm2-135m-instruct", load_in_4bit=True)
model = FastLanguageModel.get_peft_model(model, r=16)
FastLanguageModel.for_inference(model)
"""

from __future__ import annotations

import os
import warnings

from tunesmith.api.export_methods import attach_export_methods
from tunesmith.errors import TunesmithError, closest_name
from tunesmith.generation.generate import disable_fast_generation, enable_fast_generation
from tunesmith.models.loader import load
from tunesmith.models.quantization import keep_4bit_weights_unpacked
from tunesmith.models.registry import DEFAULT_MODEL
from tunesmith.training.lora import enable_checkpointing, get_peft_model

__all__ = ["FastLanguageModel"]

# Keywords other tools' from_pretrained accepts that change nothing here: warned about, not rejected,
# so notebooks written for them run unchanged.
_IGNORED_KEYWORDS = {
    "fast_inference",
    "gpu_memory_utilization",
    "max_lora_rank",
    "fix_tokenizer",
    "use_exact_model_name",
    "random_state",
    "float8_kv_cache",
    "disable_log_stats",
    "use_gradient_checkpointing",
    "resize_model_vocab",
    "revision",
    "load_in_16bit",
}
_KEYWORDS = (
    "max_seq_length",
    "dtype",
    "load_in_4bit",
    "load_in_8bit",
    "full_finetuning",
    "token",
    "device_map",
    "trust_remote_code",
)


class FastLanguageModel:
    """Load, adapt (LoRA) and switch a causal language model between training and inference."""

    @staticmethod
    def from_pretrained(
        model_name: str | os.PathLike = DEFAULT_MODEL,
        max_seq_length: int = 2048,
        dtype=None,
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        full_finetuning: bool = False,
        token: str | None = None,
        device_map=None,
        trust_remote_code: bool = False,
        **kwargs,
    ):
        """Load ``(model, tokenizer)``; see :func:`tunesmith.models.loader.load` for the arguments."""
        _check_keywords(kwargs)
        model, tokenizer = load(
            model_name,
            max_seq_length=max_seq_length,
            dtype=dtype,
            load_in_4bit=load_in_4bit,
            load_in_8bit=load_in_8bit,
            full_finetuning=full_finetuning,
            token=token,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
        )
        return attach_export_methods(model), tokenizer

    @staticmethod
    def get_peft_model(model, **kwargs):
        """Add LoRA adapters (see :func:`tunesmith.training.lora.get_peft_model` for the arguments); the
        adapted model keeps ``save_pretrained_gguf`` / ``save_pretrained_merged``."""
        return attach_export_methods(get_peft_model(model, **kwargs))

    @staticmethod
    def for_inference(model):
        """Switch ``model`` to generation: eval mode, KV cache on, and ``model.generate`` on the fast path (a
        static KV cache; on a GPU the one-token step replays as a CUDA graph). Returns ``model``."""
        keep_4bit_weights_unpacked(model)
        model.eval()
        _set_use_cache(model, True)
        return enable_fast_generation(model)

    @staticmethod
    def for_training(model, use_gradient_checkpointing: bool | str = True):
        """Switch ``model`` back to training: train mode, KV cache off, optional gradient checkpointing."""
        keep_4bit_weights_unpacked(model)
        disable_fast_generation(model)  # transformers' generate() again, and the static cache freed
        model.train()
        # Training forwards need no KV cache; generate() keeps using it through generation_config.
        model.config.use_cache = False
        if use_gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
            enable_checkpointing(model, True)
        return model


def _check_keywords(kwargs: dict) -> None:
    """Warn about known no-op keywords; reject unknown ones with a did-you-mean hint."""
    for key in kwargs:
        if key in _IGNORED_KEYWORDS:
            warnings.warn(
                f"from_pretrained({key}=...) has no effect in tunesmith and is ignored.", stacklevel=3
            )
            continue
        near = closest_name(key, _KEYWORDS)
        hint = f" Did you mean {near}?" if near else ""
        raise TunesmithError(
            f"FastLanguageModel.from_pretrained got the unknown keyword {key!r}.{hint} "
            f"Known keywords: model_name, {', '.join(_KEYWORDS)}."
        )


def _set_use_cache(model, on: bool) -> None:
    """Turn the KV cache on or off in the config and generation config (PEFT models forward both)."""
    for config in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if config is not None:
            config.use_cache = on
