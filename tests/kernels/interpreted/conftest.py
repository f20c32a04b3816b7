"""Runs only in the child pytest that ``test_kernels_interpreted.py`` starts with ``TRITON_INTERPRET=1``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # _interp_helpers


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.exit(
            "tests/kernels/interpreted must run with TRITON_INTERPRET=1 (see tests/kernels/conftest.py)", 2
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
