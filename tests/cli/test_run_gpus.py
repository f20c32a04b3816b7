"""``tunesmith run --gpus 2 --device cpu``: two training processes (gloo) through the same launcher path as on
GPUs (torch's elastic agent in a child process), against one process with the same global batch.

Real parts only: the embedded SmolLM2-135M-Instruct, the shipped MedQuAD rows, TRL training under DDP. Runs
are fp32 (``training.bf16=false``) so the comparison is exact up to summation order; a few steps and rows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunesmith.training.distributed import FAULT_ENV

QUICK = [
    "--set", "training.max_steps=4",
    "--set", "training.warmup_steps=0",
    "--set", "training.per_device_train_batch_size=1",
    "--set", "training.global_batch_size=2",  # 1 process: accumulation 2; 2 processes: accumulation 1
    "--set", "training.save_steps=2",
    "--set", "training.bf16=false",
    "--set", "data.max_rows=40",
    "--set", "model.max_seq_length=64",
    "--set", "probes=[]",
    "--set", "generation.held_out_questions=0",  # answering them is half of each run's time; not checked here
    "--set", "export.formats=[lora]",
    "--set", "export.verify=false",
]  # fmt: skip
GPUS = ["--gpus", "2", "--device", "cpu"]
# A rank that dies is noticed by the agent within a second; the rest is process start-up on a busy CPU.
FAILURE_BOUND_S = 240


def _command(folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tunesmith.cli.main",
        "run",
        *QUICK,
        "--set",
        f"output.folder={folder}",
        *extra,
    ]


def _env(**extra: str) -> dict[str, str]:
    return {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1", **extra}


def _losses(folder: Path) -> list[tuple[int, float]]:
    lines = (folder / "training" / "training_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def _processes_naming(marker: str) -> list[int]:
    """Living processes whose command line holds ``marker`` (the run's own output folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="ignore")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_until_gone(marker: str, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_naming(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> Path:
    """The reference: one process, the same global batch (2 rows per step) and data order."""
    folder = tmp_path_factory.mktemp("one") / "run"
    proc = subprocess.run(_command(folder), capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, list[int]]:
    """Two processes; the launcher is killed with SIGKILL after the first checkpoint; the same command
    then resumes. Returns the folder, the resumed run, and the processes left after the kill."""
    folder = tmp_path_factory.mktemp("two") / "run"
    log = folder.parent / "first.log"
    with log.open("w") as out:
        launcher = subprocess.Popen(_command(folder, *GPUS), stdout=out, stderr=subprocess.STDOUT, env=_env())
        checkpoint = folder / "training" / "checkpoint-2"
        deadline = time.monotonic() + 600
        while not checkpoint.is_dir() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    assert checkpoint.is_dir(), log.read_text()[-3000:]
    left = _wait_until_gone(str(folder))
    proc = subprocess.run(_command(folder, *GPUS), capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc, left


def test_killing_the_launcher_leaves_no_process_behind(killed_then_resumed) -> None:
    _, _, left = killed_then_resumed
    assert left == [], f"processes left after SIGKILL of the launcher: {left}"


def test_two_processes_match_one_and_resume_exactly(single_process, killed_then_resumed) -> None:
    folder, proc, _ = killed_then_resumed
    assert "resuming from training/checkpoint-2" in proc.stdout
    one, two = _losses(single_process), _losses(folder)
    assert [s for s, _ in two] == [1, 2, 3, 4], "rank 0 alone writes the log, once per step"
    assert [s for s, _ in one] == [s for s, _ in two]
    for (step, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) < 1e-4, f"step {step}: one process {a}, two processes {b}"


def test_global_batch_is_stated_and_every_rank_saved_its_state(killed_then_resumed) -> None:
    folder, proc, _ = killed_then_resumed
    batch = "global batch 2 = 1 per device x 1 accumulation x 2 process(es) (DDP)"
    assert batch in proc.stderr and f"4 optimizer step(s); {batch}." in (folder / "report.md").read_text()
    checkpoints = sorted(p.name for p in (folder / "training").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    last = folder / "training" / "checkpoint-4"
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"} <= {
        p.name for p in last.iterdir()
    }
    assert not list(folder.rglob("*.partial")), "no half-written folder is left"
    assert (folder / "report.html").is_file() and (folder / "lora" / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "run-state.json").read_text())["status"] == "finished"
    assert proc.stdout.count("[11/11] Writing the report") == 1, "rank 0 alone reports"


def test_a_rank_killed_mid_run_gives_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run(
        _command(folder, *GPUS), capture_output=True, text=True, timeout=900, env=_env(**{FAULT_ENV: "1:2"})
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "rank 1 of 2 was killed by SIGKILL" in error[0], proc.stderr[-3000:]
    assert "same command resumes" in error[0] and "Traceback" not in proc.stderr
    assert took < FAILURE_BOUND_S
    assert _wait_until_gone(str(folder), timeout=5) == []


def _ctrl_c_during_training(folder: Path, log: Path, presses: int, after_step: int) -> int:
    """Run on 2 processes; once the log has a step past ``after_step``, press Ctrl-C ``presses`` times as a
    terminal does (SIGINT to the launcher's process group: the launcher and the agent, not the ranks, which
    torch starts in sessions of their own). Returns the launcher's exit status."""
    longer = ["--set", "training.max_steps=40", "--set", "training.save_steps=100"]
    with log.open("w") as out:
        launcher = subprocess.Popen(
            _command(folder, *GPUS, *longer), stdout=out, stderr=subprocess.STDOUT, env=_env(),
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while launcher.poll() is None and time.monotonic() < deadline:
            if (folder / "training" / "training_log.jsonl").is_file() and any(
                step > after_step for step, _ in _losses(folder)
            ):
                break
            time.sleep(0.1)
        for _ in range(presses):
            os.killpg(launcher.pid, signal.SIGINT)
            time.sleep(0.05)
        return launcher.wait(timeout=FAILURE_BOUND_S)


def test_ctrl_c_stops_every_rank_after_one_step_and_twice_stops_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    first = tmp_path / "first.log"
    code = _ctrl_c_during_training(folder, first, presses=1, after_step=0)
    text = first.read_text()
    assert code == 130, text[-3000:]
    stopped = re.findall(r"Stopped at step (\d+): a checkpoint and the loss curve are in", text)
    assert len(stopped) == 1 and text.count("Ctrl-C: stopping after this step") == 1, "rank 0 alone speaks"
    step = int(stopped[0])
    checkpoint = folder / "training" / f"checkpoint-{step}"
    assert sorted(p.name for p in (folder / "training").glob("checkpoint-*")) == [checkpoint.name]
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}, "both ranks"
    assert json.loads((folder / "run-state.json").read_text())["status"] == "interrupted"
    assert "Traceback" not in text and _wait_until_gone(str(folder), timeout=5) == []

    # the same command resumes there; two presses then stop it at once, and it says where to resume
    second = tmp_path / "second.log"
    code = _ctrl_c_during_training(folder, second, presses=2, after_step=step)
    text = second.read_text()
    assert code == 130 and f"resuming from training/checkpoint-{step}" in text, text[-3000:]
    assert text.count("Stopped at once during stage 6/11") == 1, text[-3000:]
    assert f"training continues from training/checkpoint-{step}" in text
    assert json.loads((folder / "run-state.json").read_text())["status"] == "interrupted"
    assert "Traceback" not in text and _wait_until_gone(str(folder), timeout=5) == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--gpus", "0"], "--gpus 0: give the number of GPUs"),
        (["--gpus", "2"], "--gpus 2 asks for more GPUs than this machine shows"),
        (
            ["--gpus", "2", "--device", "cpu", "--set", "training.global_batch_size=3"],
            "multiple of 1 x 2 = 2",
        ),
        (["--device", "cpu"], "add --gpus N"),
    ],
)
def test_a_wrong_launch_is_refused_before_any_work(
    tmp_path: Path, capsys, extra: list[str], expected: str
) -> None:
    from tunesmith.cli.main import main

    if extra == ["--gpus", "2"]:
        import torch

        if torch.cuda.device_count() >= 2:
            pytest.skip("CPU-only check: this machine has 2 GPUs")
    code = main(_command(tmp_path / "run", *extra)[3:])  # in this process: nothing starts, nothing loads
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
