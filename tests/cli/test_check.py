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


def test_python_m_tunesmith_reports_the_environment(llama_cpp_works):
    result = run_cli()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for field in ("tunesmith:", "torch:", "transformers:", "device:", "bf16:", "4-bit (QLoRA):"):
        assert f"\n{field}" in f"\n{out}", f"{field} missing from:\n{out}"
    assert re.search(r"\ndevice: +(CPU \(.*, \d+ cores, \d+ GiB RAM\)|CUDA .*GiB)", out)
    assert "4-bit (QLoRA):          works" in out  # a real NF4 matmul ran
    assert re.search(
        r"llama\.cpp verification: works \(llama-cpp-python [\d.]+; decoded a \d+-token batch\)", out
    )
    assert "supported families:" in out and "Qwen2" in out and "Llama" in out
    assert "Gemma 3 (text): fast path yes, GGUF yes, Ollama template verified" in out
    assert "Phi-3 / Phi-3.5 / Phi-4: fast path yes, GGUF yes" in out
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


def test_check_tests_llama_cpp_for_real_and_names_the_rebuild_when_it_crashes(llama_cpp_works):
    from tunesmith.export._llama_cpp_child import FAULT_ENV
    from tunesmith.export.llama_cpp import REBUILD_COMMAND

    result = run_cli("check", env={**os.environ, FAULT_ENV: "segv"})  # the decode child kills itself
    assert result.returncode == 0, result.stderr  # training still works here; verification does not
    assert "llama.cpp verification: crashes (signal 11) in a multi-token decode" in result.stdout
    assert "[warn]" in result.stdout and REBUILD_COMMAND in result.stdout
    assert "Traceback" not in result.stderr
