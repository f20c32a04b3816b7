"""``python -m tunesmith`` / ``tunesmith check``: what the install can do, and the fix when it cannot train."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_python_m_tunesmith_reports_the_environment():
    result = run_cli()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for field in ("tunesmith:", "torch:", "transformers:", "device:", "bf16:", "4-bit (QLoRA):"):
        assert f"\n{field}" in f"\n{out}", f"{field} missing from:\n{out}"
    assert re.search(r"\ndevice: +(CPU \(.*, \d+ cores, \d+ GiB RAM\)|CUDA .*GiB)", out)
    assert "4-bit (QLoRA):          works" in out  # a real NF4 matmul ran
    assert "llama.cpp verification: available" in out
    assert "supported families:" in out and "Qwen2" in out and "Llama" in out
    assert out.rstrip().endswith("ready: this install can train.")
    assert "Traceback" not in result.stderr


def test_check_names_the_fix_when_a_training_package_is_broken(tmp_path):
    broken = tmp_path / "trl"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated broken trl install')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])}
    result = run_cli("check", env=env)
    assert result.returncode == 1
    assert "trl:" in result.stdout and "missing  [FAIL]" in result.stdout
    assert "fix (trl): pip install 'trl'" in result.stdout
    assert "cannot train" in result.stderr and "Traceback" not in result.stderr
