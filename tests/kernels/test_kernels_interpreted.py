"""Every Triton kernel against its pure-PyTorch reference on CPU, through Triton's interpreter.

The tests themselves live in ``interpreted/``; see ``conftest.py`` for why they run in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def test_triton_kernels_match_references_under_the_interpreter():
    pytest.importorskip("triton", reason="triton is part of the test extra: pip install 'tunesmith[test]'")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "interpreted"), "-q", "-p", "no:cacheprovider", "-x"],
        cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
