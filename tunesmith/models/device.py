"""Which device a model goes on and which dtype its weights take.

Defaults (``dtype=None``):

* CUDA: bf16 where the GPU supports it (Ampere and newer), else fp16.
* CPU: fp32 weights. A CPU with native bf16 (AVX512-BF16 / AMX) still reports
  :func:`is_bfloat16_supported` as True, so training runs under bf16 *autocast* over fp32 weights:
  as fast as bf16 weights on such CPUs, but the converted model stays exact and the optimizer keeps
  full-precision master weights.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from tunesmith._distributed import is_distributed, local_rank
from tunesmith.errors import TunesmithError

__all__ = ["resolve_device", "resolve_dtype", "is_bfloat16_supported", "cpu_has_bf16"]

_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device_map=None) -> torch.device:
    """The device a model is loaded onto.

    ``device_map`` may be None or ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, a ``torch.device``, an int GPU index, or a transformers device-map dict (its first
    device is returned). A device that is asked for but absent raises :class:`TunesmithError`.

    In a multi-process run (torchrun, ``accelerate launch``) each process trains on its own GPU, so None,
    ``"auto"`` and ``"cuda"`` mean the GPU of this process's ``LOCAL_RANK``.
    """
    if device_map is None or device_map == "auto" or device_map == "cuda":
        if not torch.cuda.is_available():
            if device_map == "cuda":
                _require_present(torch.device("cuda"))
            return torch.device("cpu")
        if is_distributed():
            device = torch.device("cuda", local_rank())
            _require_present(device)
            return device
        return torch.device("cuda")
    if isinstance(device_map, dict):
        if not device_map:
            raise TunesmithError("device_map is an empty dict. Pass None/'auto', 'cpu', 'cuda' or 'cuda:N'.")
        return resolve_device(next(iter(device_map.values())))
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"
    try:
        device = torch.device(device_map)
    except (RuntimeError, TypeError):
        raise TunesmithError(
            f"device_map={device_map!r} is not a device tunesmith understands. "
            "Pass None or 'auto' (GPU if present), 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    _require_present(device)
    return device


def _require_present(device: torch.device) -> None:
    """Raise a clear error when ``device`` is not on this machine."""
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index or 0
        if index < count:
            return
        have = f"{count} CUDA GPU(s)" if count else "no CUDA GPU (or a CPU-only torch build)"
        raise TunesmithError(
            f"device_map={str(device)!r} asks for a CUDA GPU, but this machine has {have} "
            f"(torch {torch.__version__}). Use device_map='cpu' (or leave it out to pick automatically), "
            "or install a CUDA build of torch on a machine with a GPU."
        )
    if device.type == "mps" and torch.backends.mps.is_available():
        return
    raise TunesmithError(
        f"device_map={str(device)!r} asks for a {device.type} device, which this machine does not have. "
        "Use device_map='cpu' or leave it out to pick automatically."
    )


def resolve_dtype(dtype=None, device: torch.device | str | None = None) -> torch.dtype:
    """The weight dtype: ``dtype`` if given (a torch dtype or a name like ``"bf16"``), else the default
    for ``device`` (see the module docstring)."""
    device = torch.device(device) if device is not None else resolve_device(None)
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if is_bfloat16_supported(device) else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower().removeprefix("torch.")]
    raise TunesmithError(
        f"dtype={dtype!r} is not a weight dtype tunesmith loads. Use None (pick automatically), "
        "torch.bfloat16, torch.float16 or torch.float32 (or the names 'bf16', 'fp16', 'fp32')."
    )


def is_bfloat16_supported(device: torch.device | str | None = None) -> bool:
    """True when ``device`` (default: the GPU if present, else the CPU) computes bf16 natively.

    Use it as in the tutorial: ``bf16=is_bfloat16_supported(), fp16=not is_bfloat16_supported()``.
    """
    device = torch.device(device) if device is not None else resolve_device(None)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16; Linux flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False
