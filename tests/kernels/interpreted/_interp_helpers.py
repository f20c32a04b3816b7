"""Tolerances and the error measure shared by the interpreted kernel tests."""

from __future__ import annotations

import torch

# Per-dtype tolerances on ||out - ref|| / ||ref||: float32 kernels agree to rounding; bf16 outputs are
# rounded once more (and the interpreter truncates float32 -> bf16 instead of rounding to nearest).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
DTYPES = [torch.float32, torch.bfloat16]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
