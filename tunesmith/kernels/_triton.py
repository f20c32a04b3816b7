"""Triton, imported lazily, and the choice between a compiled kernel and Triton's interpreter.

Kernel modules import ``triton`` and ``tl`` from here. Without Triton installed they get stand-ins that
let the module import (so the pure-PyTorch references keep working on CPU) and raise an install hint
the moment a kernel is launched.
"""

import os

import torch

from tunesmith.errors import TunesmithError

__all__ = ["HAS_TRITON", "triton", "tl", "kernel_for", "next_power_of_2", "num_warps_for", "on_gpu"]

INSTALL_HINT = (
    "Triton is not installed, so tunesmith's fused GPU kernels cannot run. Install it with "
    "`pip install 'tunesmith[gpu]'` (or `pip install triton`), or leave the fast path off: on CPU "
    "tunesmith uses its pure-PyTorch references."
)


class _Unavailable:
    """Stands in for a ``@triton.jit`` kernel when Triton is missing; launching it raises the hint."""

    def __init__(self, fn):
        self.fn = fn

    def __getitem__(self, grid):
        raise TunesmithError(INSTALL_HINT)


class _MissingTriton:
    """Stand-in for the ``triton`` module: ``triton.jit`` still decorates, nothing runs."""

    @staticmethod
    def jit(fn=None, **_):
        return _Unavailable(fn) if fn is not None else _Unavailable

    @staticmethod
    def cdiv(a: int, b: int) -> int:
        return -(-a // b)


class _MissingLanguage:
    """Stand-in for ``triton.language``: only what kernel signatures touch at import time."""

    constexpr = object


try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only installs: the references still work
    triton = _MissingTriton()
    tl = _MissingLanguage()
    HAS_TRITON = False


def on_gpu(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run on these tensors.

    That is when Triton is installed and every tensor lives on a CUDA device, or, for tests on CPU,
    when Triton's interpreter is on (``TRITON_INTERPRET=1``). Otherwise callers use the references.
    """
    if not HAS_TRITON:
        return False
    return all(t.is_cuda for t in tensors) or os.environ.get("TRITON_INTERPRET") == "1"


def kernel_for(jit_fn, device: torch.device):
    """The kernel to launch for tensors on ``device``.

    CUDA tensors get the compiled kernel. CPU tensors work only under Triton's interpreter
    (``TRITON_INTERPRET=1`` set before Triton is first imported), which is how CI tests every kernel.
    """
    if not HAS_TRITON:
        raise TunesmithError(INSTALL_HINT)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise TunesmithError(
            f"A tunesmith Triton kernel was launched on a {device.type} tensor. Kernels run on CUDA tensors, "
            "or on CPU under Triton's interpreter (set TRITON_INTERPRET=1 before Triton is imported); "
            "elsewhere use the module's pure-PyTorch reference (the fast-path modules do this themselves)."
        )
    return jit_fn


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (Triton block sizes must be powers of two)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def num_warps_for(block_size: int) -> int:
    """Warps per program for a row kernel: more warps for wider rows, as Liger's ``calculate_settings``."""
    if block_size >= 32768:
        return 32
    if block_size >= 8192:
        return 16
    if block_size >= 2048:
        return 8
    return 4
