"""Checkpoints: complete or invisible, and a run killed with SIGKILL resumes to the same final loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.training import SFTTrainer, TrainingArguments

RUNNER = Path(__file__).with_name("resume_runner.py")


def _run(tiny_dir, out, *extra, wait=True):
    """The runner to its end, or (``wait=False``) started in the background with its output in ``out``.log
    (a pipe nobody reads could fill and stall it); ``_output`` reads that log."""
    command = [sys.executable, str(RUNNER), str(tiny_dir), str(out), *extra]
    # one thread each: the uninterrupted run trains beside the one that is killed, on a 2-core machine
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    with open(f"{out}.log", "w") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _output(out: Path) -> str:
    return Path(f"{out}.log").read_text()[-3000:]


def _final_loss(out: Path) -> tuple[int, float]:
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    last = [r for r in log if "loss" in r][-1]
    return last["step"], last["loss"]


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tiny_llama_dir, tmp_path):
    whole = _run(tiny_llama_dir, tmp_path / "whole", wait=False)  # the reference, trained alongside
    killed = tmp_path / "killed"
    process = _run(tiny_llama_dir, killed, "--hang-after-save", wait=False)
    marker = killed / "saved.marker"
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), _output(killed) if process.poll() is not None else "no checkpoint in time"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert (killed / "checkpoint-4").is_dir() and not (killed / "checkpoint-8").exists()

    resumed = _run(tiny_llama_dir, killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=300) == 0, _output(tmp_path / "whole")
    step_whole, loss_whole = _final_loss(tmp_path / "whole")
    step_resumed, loss_resumed = _final_loss(killed)
    assert step_whole == step_resumed == 8
    assert abs(loss_whole - loss_resumed) < 1e-4, (loss_whole, loss_resumed)
    log = [json.loads(line) for line in (killed / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(
        range(1, 9)
    )  # each step once, even across the kill


class _FailingSave(SFTTrainer):
    """A trainer whose disk 'fills up' while writing the RNG state, the last part of a checkpoint."""

    def _save_rng_state(self, output_dir):
        raise OSError("No space left on device")


def test_a_failed_save_leaves_no_checkpoint_behind(tiny, tmp_path):
    import datasets

    model, tokenizer = tiny
    rows = datasets.Dataset.from_list([{"text": f"Row number {i} says hello."} for i in range(8)])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        bf16=False,
        max_seq_length=32,
    )
    trainer = _FailingSave(model=model, tokenizer=tokenizer, train_dataset=rows, args=args)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*")) and not list(tmp_path.glob(".checkpoint-*"))
    assert (tmp_path / "loss.png").exists()  # the curve so far is drawn on failure too


def test_resume_without_a_checkpoint_is_a_clear_error(tiny, tmp_path):
    import datasets

    model, tokenizer = tiny
    rows = datasets.Dataset.from_list([{"text": "Hello there."}] * 2)
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=rows,
        args=TrainingArguments(output_dir=str(tmp_path / "empty"), max_steps=1),
    )
    with pytest.raises(TunesmithError, match="holds no checkpoint-N folder"):
        trainer.train(resume_from_checkpoint=True)


def test_resuming_a_finished_training_loads_its_weights_and_trains_no_further(tiny_llama_dir, tmp_path):
    # `tunesmith run` resumes training to get the trained model back (verification after a llama.cpp
    # crash); transformers would run one optimizer step past max_steps from such a checkpoint.
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.training import get_peft_model

    rows = datasets.Dataset.from_list([{"text": f"Row number {i} says hello."} for i in range(8)])

    def trainer() -> SFTTrainer:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        model = get_peft_model(model, r=4, random_state=0, use_gradient_checkpointing=False)
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, save_steps=2, logging_steps=1, warmup_steps=0,
            per_device_train_batch_size=2, learning_rate=1e-2, lr_scheduler_type="constant", bf16=False,
            max_seq_length=32,
        )  # fmt: skip
        return SFTTrainer(model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir),
                          train_dataset=rows, args=args)  # fmt: skip

    def lora(t: SFTTrainer) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in t.model.named_parameters() if "lora_" in n}

    first = trainer()
    first.train()
    trained = lora(first)
    again = trainer()
    assert any(not torch.equal(trained[n], w) for n, w in lora(again).items()), "a fresh adapter differs"
    again.train(resume_from_checkpoint=True)
    assert again.state.global_step == 2 and sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2"
    ]
    assert all(torch.equal(trained[n], w) for n, w in lora(again).items()), "the trained adapter is back"
    log = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
