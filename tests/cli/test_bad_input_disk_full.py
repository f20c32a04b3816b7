"""A write that fails part-way for lack of room, through the real CLI: one clear error, exit 2, no
traceback, no partial file, nothing half-written under a real name, and the same command works once
there is room again.

The disk is "full" through the kernel's file-size limit (``RLIMIT_FSIZE``, the shell's ``ulimit -f``):
every write past the limit fails with EFBIG in the middle of a file, as ENOSPC does on a full disk, with
no mount or privilege needed. Python ignores SIGXFSZ, so the write fails instead of the process dying.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

LIMIT_BYTES = 256 * 1024


def tunesmith(*args: str, cwd: Path, limit: int | None = LIMIT_BYTES) -> subprocess.CompletedProcess:
    def set_limit() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    cmd = [sys.executable, "-m", "tunesmith.cli.main", *args]
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=900, preexec_fn=set_limit, env=env
    )


def refused_for_room(proc: subprocess.CompletedProcess, root: Path, *names: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "stopped part-way" in proc.stderr and "ulimit -f" in proc.stderr, proc.stderr[-3000:]
    for name in names:
        assert name in proc.stderr, proc.stderr[-3000:]
    assert not list(root.rglob("*.partial")), "a partial file was left behind"


@pytest.mark.parametrize(("fmt", "written"), [("gguf", "*.gguf"), ("merged", "*.safetensors")])
def test_export_that_runs_out_of_room_leaves_nothing_and_works_with_room(
    tiny_llama_dir: Path, tmp_path: Path, fmt: str, written: str
) -> None:
    out = tmp_path / "out"
    args = ["export", str(tiny_llama_dir), "--format", fmt, "--out", str(out), "--quant", "f16"]
    args = args if fmt == "gguf" else args[:-2]
    refused_for_room(tunesmith(*args, cwd=tmp_path), tmp_path, str(out))
    assert not list(out.rglob(written)), "a half-written export was left under its real name"
    again = tunesmith(*args, "--overwrite", cwd=tmp_path, limit=None)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(out.rglob(written))


def test_run_that_runs_out_of_room_at_a_checkpoint_fails_clearly_then_resumes(tmp_path: Path) -> None:
    quick = [
        "--set", "training.max_steps=2", "--set", "training.save_steps=1", "--set", "training.warmup_steps=0",
        "--set", "training.gradient_accumulation_steps=1", "--set", "data.max_rows=60",
        "--set", "model.max_seq_length=128", "--set", "generation.held_out_questions=0",
        "--set", "generation.max_new_tokens=4", "--set", "probes=[What is anemia?]",
        "--set", "export.formats=[lora]", "--set", "output.folder=run",
    ]  # fmt: skip
    first = tunesmith("run", *quick, cwd=tmp_path, limit=2 * 1024 * 1024)  # the LoRA checkpoint is ~19 MB
    refused_for_room(first, tmp_path, "Stage 6/", "run the same command again")
    state = json.loads((tmp_path / "run" / "run-state.json").read_text())
    assert state["status"] == "failed" and "train" not in state["completed"]
    assert not list((tmp_path / "run" / "training").glob("checkpoint-*")), "no half-written checkpoint"

    second = tunesmith("run", *quick, cwd=tmp_path, limit=None)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "done in the earlier attempt" in second.stdout
    assert json.loads((tmp_path / "run" / "run-state.json").read_text())["status"] == "finished"
