"""Runs only in the child pytest that ``test_kernels_interpreted.py`` starts with ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import os

import pytest
import torch

# Per-dtype tolerances on ||out - ref|| / ||ref||: float32 kernels agree to rounding; bf16 outputs are
# rounded once more (and the interpreter truncates float32 -> bf16 instead of rounding to nearest).
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}
DTYPES = [torch.float32, torch.bfloat16]


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.exit(
            "tests/kernels/interpreted must run with TRITON_INTERPRET=1 (see tests/kernels/conftest.py)", 2
        )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
