"""Every Triton kernel against its pure-PyTorch reference on CPU, through Triton's interpreter.

The tests themselves live in ``interpreted/``; ``tests/conftest.py`` says why they run in a child process.
"""

from __future__ import annotations

from pathlib import Path


def test_triton_kernels_match_references_under_the_interpreter(run_interpreted):
    run_interpreted(Path(__file__).parent / "interpreted")
