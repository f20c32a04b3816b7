"""``load(model_name, ...) -> (model, tokenizer)``: every source, every precision, one validated path.

Order: check the arguments, find the device and dtype, turn the name into a local folder (alias and
``.gguf`` sources convert once into the cache; hub ids download), check the architecture, the weight
files and that the weights fit the device's free memory (``memory.py``), then load. Every bad input
raises :class:`TunesmithError` before any long work starts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.models.device import resolve_device, resolve_dtype
from tunesmith.models.expert_stacks import quantize_expert_stacks
from tunesmith.models.memory import WeightBytes, require_room_for_weights
from tunesmith.models.quantization import bnb_config, keep_4bit_weights_unpacked, require_bitsandbytes
from tunesmith.models.registry import require_family
from tunesmith.models.sources import check_source, is_hub_id, materialize

__all__ = ["load", "load_tokenizer", "check_room", "materialize"]


def load(
    model_name: str | os.PathLike,
    *,
    max_seq_length: int = 2048,
    dtype=None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    full_finetuning: bool = False,
    token: str | None = None,
    device_map=None,
    trust_remote_code: bool = False,
):
    """Load a causal language model and its tokenizer.

    ``model_name`` is a built-in alias (``"smollm2-135m-instruct"``), a ``.gguf`` file, a local folder
    in transformers layout, or a hub id (``"org/name"``). ``dtype=None`` picks bf16/fp16 on GPU and fp32
    on CPU (see :mod:`tunesmith.models.device`). ``load_in_4bit`` gives NF4 weights, on GPU and CPU.
    Returns ``(model, tokenizer)``; ``model.max_seq_length`` holds ``max_seq_length``.
    """
    _check_arguments(max_seq_length, load_in_4bit, load_in_8bit, full_finetuning)
    device = resolve_device(device_map)
    torch_dtype = resolve_dtype(dtype, device)
    need = None
    if is_hub_id(model_name):  # its config.json alone first: a model that cannot fit is not downloaded
        need = _require_room(check_source(os.fspath(model_name), hub=True, token=token), torch_dtype, device,
                             load_in_4bit, load_in_8bit, trust_remote_code)  # fmt: skip
    folder = materialize(model_name, token=token, trust_remote_code=trust_remote_code)
    config, family = _checked_config(folder, trust_remote_code)
    _check_weight_files(folder)
    if need is None:  # the same config.json when the hub id's was checked before the download
        need = require_room_for_weights(config, folder, torch_dtype, device, load_in_4bit, load_in_8bit)
    tokenizer = _load_tokenizer(folder, trust_remote_code)
    model = _load_model(
        folder, config, family, torch_dtype, device, load_in_4bit, load_in_8bit, trust_remote_code
    )
    _finish(model, tokenizer, max_seq_length, full_finetuning)
    return model, tokenizer


def check_room(
    model_name: str | os.PathLike,
    *,
    dtype=None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    device_map=None,
    token: str | None = None,
    trust_remote_code: bool = False,
) -> None:
    """What ``load`` would check before reading weights, without loading: the source (a hub id's
    ``config.json`` alone is fetched), its family, and that the weights fit the device's free memory (not
    known for an alias or a ``.gguf`` file before conversion: those are checked when loaded)."""
    device = resolve_device(device_map)
    folder = check_source(os.fspath(model_name), hub=True, token=token)
    _require_room(folder, resolve_dtype(dtype, device), device, load_in_4bit, load_in_8bit, trust_remote_code)


def _require_room(folder, dtype, device, load_in_4bit, load_in_8bit, trust_remote_code) -> WeightBytes | None:
    if folder is None:
        return None
    config, _ = _checked_config(folder, trust_remote_code)
    return require_room_for_weights(config, folder, dtype, device, load_in_4bit, load_in_8bit)


def load_tokenizer(
    model_name: str | os.PathLike, *, token: str | None = None, trust_remote_code: bool = False
):
    """The tokenizer ``load`` would return for ``model_name``, without loading the weights."""
    folder = materialize(model_name, token=token, trust_remote_code=trust_remote_code)
    return _load_tokenizer(folder, trust_remote_code)


def _check_arguments(max_seq_length, load_in_4bit: bool, load_in_8bit: bool, full_finetuning: bool) -> None:
    """Reject argument combinations that cannot work, before anything is read."""
    if load_in_4bit and load_in_8bit:
        raise TunesmithError(
            "load_in_4bit=True and load_in_8bit=True were both given; a model has one weight format. "
            "Pick load_in_4bit=True (QLoRA, least memory) or load_in_8bit=True, not both."
        )
    if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length < 1:
        raise TunesmithError(
            f"max_seq_length={max_seq_length!r} is not a positive whole number of tokens. "
            "Use e.g. max_seq_length=2048."
        )
    if load_in_4bit or load_in_8bit:
        require_bitsandbytes()
    if full_finetuning and (load_in_4bit or load_in_8bit):
        raise TunesmithError(
            "full_finetuning=True updates every weight, which 4-bit/8-bit weights cannot hold. Drop "
            "load_in_4bit/load_in_8bit for full fine-tuning, or keep them and train LoRA adapters instead."
        )


def _checked_config(folder: Path, trust_remote_code: bool):
    """(The config of the model to load from ``folder``, its family row); a clear error when the config is
    unreadable or of an unsupported family."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as err:
        raise TunesmithError(
            f"{folder / 'config.json'} could not be read as a model config ({type(err).__name__}: {err}). "
            "Save the model again with save_pretrained, or pass the original .gguf file."
        ) from None
    family = require_family(getattr(config, "model_type", None), folder)
    if family.text_part_weights:  # a multimodal checkpoint (Gemma 3 4B+): its text model alone
        config = config.text_config
    return config, family


def _check_weight_files(folder: Path) -> None:
    """Open the header of every safetensors file, so a truncated or corrupt one is named before loading."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TunesmithError(
            f"The folder {folder} has no *.safetensors weights (tunesmith does not load pickle .bin files). "
            "Save the model with save_pretrained(safe_serialization=True), or pass a .gguf file."
        )
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                handle.keys()
        except Exception as err:  # safetensors raises its own SafetensorError type
            raise TunesmithError(
                f"The weight file {file} is truncated or corrupt ({err}). Copy or save the model again."
            ) from None


def _load_tokenizer(folder: Path, trust_remote_code: bool):
    """The tokenizer of ``folder``, with a pad token (training batches need one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as err:
        raise TunesmithError(
            f"The tokenizer in {folder} could not be loaded ({type(err).__name__}: {err}). The folder needs "
            "tokenizer.json (or tokenizer.model) and tokenizer_config.json beside config.json."
        ) from None
    # Padding with the end-of-sequence token can hide EOS from the loss (the model then never learns to
    # stop), so a distinct unknown token is preferred when the tokenizer has one.
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        spare = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else None
        tokenizer.pad_token = spare or tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def _load_model(folder, config, family, dtype, device, load_in_4bit, load_in_8bit, trust_remote_code):
    """The model weights of ``folder`` on ``device`` in ``dtype`` (or 4-bit/8-bit); of a multimodal
    checkpoint, the text model's."""
    from transformers import AutoModelForCausalLM

    quantization = bnb_config(load_in_4bit, load_in_8bit, compute_dtype=dtype)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder,
            config=config,
            key_mapping=dict(family.text_part_weights) or None,
            dtype=dtype,
            device_map=str(device),
            quantization_config=quantization,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
        )
    except (OSError, RuntimeError, ValueError) as err:
        raise TunesmithError(
            f"Loading the weights in {folder} failed ({type(err).__name__}: {err}). If a file is damaged, "
            "copy or save the model again; if memory ran out, try load_in_4bit=True."
        ) from None
    # transformers fills absent or wrongly shaped weights with random values and only logs it; a model
    # that is partly random would train and answer as nonsense, so it is an error here.
    bad = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if bad:
        raise TunesmithError(
            f"The weights in {folder} do not match its config.json: {len(bad)} tensor(s) are missing or have "
            f"the wrong shape (first: {bad[0]}). The files are incomplete or belong to another model; copy "
            "or save the model again."
        )
    if quantization is not None:
        keep_4bit_weights_unpacked(model)
    if load_in_4bit:  # bitsandbytes leaves a mixture of experts' 3-D stacks in 16-bit: most of the model
        quantize_expert_stacks(model)
    return model


def _finish(model, tokenizer, max_seq_length: int, full_finetuning: bool) -> None:
    """Record the sequence length and set which weights train."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_seq_length > limit:
        warnings.warn(
            f"max_seq_length={max_seq_length} is longer than the {limit} tokens this model was trained on; "
            "quality past that length is not guaranteed.",
            stacklevel=3,
        )
    model.max_seq_length = max_seq_length
    tokenizer.model_max_length = max_seq_length
    if full_finetuning:
        model.requires_grad_(True)
        model.train()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
