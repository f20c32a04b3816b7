"""What a ``generate()`` call asks for, read the way transformers reads it, and whether the fast loop does it.

The model's own ``generation_config`` is the base and the call's keywords update it (transformers' public
``GenerationConfig.update``), so a tutorial call such as ``generate(input_ids, max_new_tokens=64,
use_cache=True)`` samples exactly when transformers would. Anything the fast loop does not do (beam search,
n-gram bans, custom processors, scores in the output) is named, and the call goes to transformers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

__all__ = ["DecodeSettings", "read_settings"]

# Keywords that change nothing in how tokens are chosen.
_NEUTRAL = {"use_cache", "synced_gpus"}
# The fields the fast loop does not do, with the value that means "off"; any other value sends the call on.
_DEFAULTS = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "constraints": None,
    "guidance_scale": None,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None,
    "watermarking_config": None,
    "stop_strings": None,
    "renormalize_logits": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "diversity_penalty": 0.0,
    "length_penalty": 1.0,
    "penalty_alpha": None,
    "low_memory": None,
    "token_healing": False,
    "dola_layers": None,
    "max_time": None,
    "remove_invalid_values": False,
    "encoder_repetition_penalty": 1.0,
}
_TOP_K_DEFAULT = 50  # transformers' default when neither the model nor the call sets top_k


@dataclass
class DecodeSettings:
    """How to choose tokens and when to stop, for one call."""

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    min_p: float | None
    repetition_penalty: float  # transformers': over the prompt and every token so far; 1.0 is off
    eos_ids: list[int]
    pad_id: int


def _ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def read_settings(model, prompt_length: int, kwargs: dict) -> tuple[DecodeSettings | None, str]:
    """``(settings, "")`` when the fast loop can run this call, else ``(None, why not)``."""
    from transformers import GenerationConfig

    kwargs = dict(kwargs)
    config = kwargs.pop("generation_config", None)
    config = copy.deepcopy(config if config is not None else model.generation_config)
    for key in list(kwargs):
        if key in _NEUTRAL:
            kwargs.pop(key)
    for key in ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "assistant_model"):
        if kwargs.pop(key, None) not in (None, []):
            return None, f"{key} is passed"
    unused = config.update(**kwargs)
    if unused:
        return None, f"generate() got {', '.join(sorted(unused))}"
    if not isinstance(config, GenerationConfig):
        return None, "generation_config is not a GenerationConfig"
    for field, off in _DEFAULTS.items():
        value = getattr(config, field, None)  # None: unset, transformers' own default applies
        if value is not None and value != off and value not in ([], {}):
            return None, f"{field}={value!r}"
    if config.max_new_tokens is not None:
        max_new = int(config.max_new_tokens)
    else:
        max_new = int(config.max_length or 20) - prompt_length
    min_new = int(config.min_new_tokens or 0) or max(0, int(config.min_length or 0) - prompt_length)
    eos = _ids(config.eos_token_id)
    pad = _ids(config.pad_token_id)
    return DecodeSettings(
        max_new_tokens=max(0, max_new),
        min_new_tokens=min_new,
        do_sample=bool(config.do_sample),
        temperature=float(config.temperature if config.temperature is not None else 1.0),
        top_k=int(_TOP_K_DEFAULT if config.top_k is None else config.top_k),
        top_p=float(config.top_p if config.top_p is not None else 1.0),
        min_p=config.min_p,
        repetition_penalty=float(config.repetition_penalty or 1.0),
        eos_ids=eos,
        pad_id=pad[0] if pad else (eos[0] if eos else 0),
    ), ""
