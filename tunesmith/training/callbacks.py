"""Callbacks: a progress bar (loss, learning rate, tokens/s, ETA) and a JSON-lines log of every log."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.training.plot import read_log

__all__ = ["ProgressBarCallback", "JsonlLogCallback", "LOG_NAME", "PLOT_NAME"]

LOG_NAME = "training_log.jsonl"
PLOT_NAME = "loss.png"


class ProgressBarCallback(TrainerCallback):
    """A tqdm bar over optimizer steps; its postfix shows the latest loss, learning rate and tokens/s."""

    def __init__(self) -> None:
        self.bar = None
        self.eval_bar = None
        self._last = None  # (time, tokens) at the previous log

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc="training", unit="step", dynamic_ncols=True
        )
        self._last = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        postfix = {}
        if "loss" in logs:
            postfix["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            postfix["lr"] = f"{logs['learning_rate']:.2e}"
        if "eval_loss" in logs:
            postfix["eval_loss"] = f"{logs['eval_loss']:.4f}"
        tokens = logs.get("num_tokens")
        now = time.monotonic()
        if tokens is not None:
            if self._last is not None and now > self._last[0] and tokens >= self._last[1]:
                postfix["tok/s"] = f"{(tokens - self._last[1]) / (now - self._last[0]):,.0f}"
            self._last = (now, tokens)
        if postfix:
            self.bar.set_postfix(postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.eval_bar is None:
            from tqdm.auto import tqdm

            total = (
                len(eval_dataloader)
                if eval_dataloader is not None and hasattr(eval_dataloader, "__len__")
                else None
            )
            self.eval_bar = tqdm(
                total=total, desc="held-out loss", unit="batch", leave=False, dynamic_ncols=True
            )
        self.eval_bar.update(1)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.eval_bar is not None:
            self.eval_bar.close()
            self.eval_bar = None


class JsonlLogCallback(TrainerCallback):
    """Append every logged record (step, epoch, loss, lr, tokens, ...) as one JSON line to
    ``training_log.jsonl``.

    A fresh run starts a new log; a resumed run keeps the records up to the checkpoint's step and drops the
    later ones (which the interrupted run wrote after that checkpoint and which are now repeated).
    """

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / LOG_NAME
        self.resumed_from: int | None = None
        self._start = time.monotonic()

    def start(self, resume_step: int | None) -> None:
        """Begin the log: empty for a fresh run, cut back to ``resume_step`` when resuming a checkpoint."""
        self.resumed_from = resume_step
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        self._start = time.monotonic()

    def write(self, record: dict) -> None:
        """Append one record (used for events such as held-out loss before training)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            record[key] = value
        record["elapsed_s"] = round(time.monotonic() - self._start, 3)
        self.write(record)
