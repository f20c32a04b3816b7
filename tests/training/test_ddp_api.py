"""The Python API under ``torchrun --nproc_per_node 2`` (gloo, CPU): each rank trains the same adapter (DDP
after a held-out evaluation), rank 0 alone writes the log and the loss curve, and the log states the global
batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.errors import TunesmithError
from tunesmith.training.arguments import TrainingArguments, accumulation_for

RUNNER = Path(__file__).with_name("ddp_runner.py")


def test_torchrun_trains_one_adapter_on_both_ranks(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(RUNNER)]
    env = {"OMP_NUM_THREADS": "1", **os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 4 = 1 per device x 2 accumulation x 2 process(es) (DDP)" in proc.stderr
    assert proc.stderr.count("global batch 4") == 1, "rank 0 alone states it"
    zero, one = load_file(tmp_path / "rank-0.safetensors"), load_file(tmp_path / "rank-1.safetensors")
    assert zero.keys() == one.keys() and zero
    for name, tensor in zero.items():
        assert torch.equal(tensor, one[name]), f"{name} differs between the ranks"
    records = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert (tmp_path / "loss.png").is_file()


def test_global_batch_sets_the_accumulation(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, global_batch_size=16)
    assert (args.gradient_accumulation_steps, args.global_batch) == (8, 16)
    assert accumulation_for(16, 2, 4) == 2
    with pytest.raises(TunesmithError, match="multiple of 2 x 3 = 6"):
        accumulation_for(16, 2, 3)


def test_sharding_on_cpu_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(TunesmithError, match="fsdp=True .* needs GPUs"):
        TrainingArguments(output_dir=str(tmp_path), fsdp=True)
