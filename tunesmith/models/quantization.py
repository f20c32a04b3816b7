"""4-bit (NF4) and 8-bit weights through bitsandbytes, on GPU and on CPU."""

from __future__ import annotations

import importlib.util
import logging

from tunesmith.errors import TunesmithError

__all__ = ["bnb_config", "require_bitsandbytes", "import_bitsandbytes", "keep_4bit_weights_unpacked"]

_BNB_HINT = "pip install 'bitsandbytes>=0.46'"
# On CPU, bitsandbytes logs at import that an optional kernel package (fetched from the hub on demand)
# is absent, then uses its built-in kernels; the notice only alarms users. peft and transformers import
# bitsandbytes on their own, so this is set before any of them runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def require_bitsandbytes(
    purpose: str = "load_in_4bit/load_in_8bit", instead: str = "load without 4-bit/8-bit"
) -> None:
    """Raise a clear error when bitsandbytes is not installed; ``purpose`` needs it, ``instead`` does not."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TunesmithError(
            f"{purpose} needs the bitsandbytes package, which is not installed. Install it with: {_BNB_HINT} "
            f"(or {instead})."
        )


def import_bitsandbytes():
    """Import bitsandbytes, with an install hint when it is missing."""
    require_bitsandbytes()
    import bitsandbytes

    return bitsandbytes


def bnb_config(load_in_4bit: bool, load_in_8bit: bool, compute_dtype):
    """The transformers ``BitsAndBytesConfig`` for the request, or None for full-precision weights.

    4-bit uses NF4 with double quantization (QLoRA's recipe); matmuls run in ``compute_dtype``.
    """
    if not (load_in_4bit or load_in_8bit):
        return None
    import_bitsandbytes()
    import torch
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


def keep_4bit_weights_unpacked(model) -> int:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights; returns how many modules were changed.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its bf16 kernel on the first
    no-grad pass (``generate()``, eval) and never unpacks it; the backward pass then reads the repacked
    bytes as NF4 and LoRA gradients come out wrong without an error. ``support_avx512bf16_for_cpu`` is
    the module's public switch for that path.
    """
    changed = 0
    for module in model.modules():
        # An instance attribute of bitsandbytes' 4-bit layers: read it without nn.Module's failing lookup on
        # every other module (this runs before each generate() call).
        if vars(module).get("support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed
