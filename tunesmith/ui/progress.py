"""Where a run stands, read from the files it writes: the stage (its headed lines in the log), the loss
curve (``training/training_log.jsonl``; held-out loss from ``run-state.json``), step, ETA and tokens/s.

Nothing here talks to the child process, so the page shows the same thing after a reload, and a run
started from a terminal in the same folder shows too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.context import TRAINING_DIR, RunContext
from tunesmith.recipe.report import ReportData
from tunesmith.recipe.state import RunState
from tunesmith.training.callbacks import LOG_NAME as TRAINING_LOG
from tunesmith.training.plot import read_log

__all__ = ["Progress", "read_progress", "log_tail", "training_rate", "run_report"]

_BAR = re.compile(r"^(.*?):\s+\d+%\|")  # a tqdm line: "desc:  57%|..."; group 1 is its description
_HEADED = re.compile(r"^\[(\d+)/(\d+)\] (.*?)(?: \.\.\.)?(?: done in the earlier attempt)?$")


@dataclass
class Progress:
    """A run's progress as the page shows it."""

    max_steps: int
    step: int = 0
    stage: str | None = None  # the latest headed line ("[6/11] Training for 75 steps")
    stage_number: int = 0
    stage_count: int = 0
    status: str | None = None  # the state file's: running | interrupted | failed | unverified | finished
    completed: list[str] = field(default_factory=list)
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    held_out: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    tokens_per_s: float | None = None
    eta_s: float | None = None

    @property
    def fraction(self) -> float:
        """How much of the training steps is done, 0..1 (1 once training is finished)."""
        if "train" in self.completed:
            return 1.0
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0


def training_rate(records: list[dict]) -> tuple[float | None, float | None]:
    """(seconds per step, tokens/s) of the latest training attempt's log records (None: not known yet).

    Only the per-step training records count (not the end-of-training and held-out ones), and only those
    since the last restart: ``elapsed_s`` starts again when a run resumes.
    """
    rows = [r for r in records if "elapsed_s" in r and "step" in r and "loss" in r]
    if not rows:
        return None, None
    start = max(
        (i for i in range(1, len(rows)) if rows[i]["elapsed_s"] < rows[i - 1]["elapsed_s"]), default=0
    )
    first_step = rows[start - 1]["step"] if start else 0
    last = rows[-1]
    steps = last["step"] - first_step
    per_step = last["elapsed_s"] / steps if steps > 0 and last["elapsed_s"] > 0 else None
    attempt = [r for r in rows[start:] if "num_tokens" in r]
    tokens = None
    if len(attempt) >= 2 and attempt[-1]["elapsed_s"] > attempt[0]["elapsed_s"]:
        seconds = attempt[-1]["elapsed_s"] - attempt[0]["elapsed_s"]
        tokens = max(0.0, attempt[-1]["num_tokens"] - attempt[0]["num_tokens"]) / seconds or None
    elif attempt and attempt[-1]["elapsed_s"] > 0:
        # one step so far: TRL's num_tokens counts from the attempt's start, as elapsed_s does
        tokens = attempt[-1]["num_tokens"] / attempt[-1]["elapsed_s"]
    return per_step, tokens


def _held_out(state: RunState | None, steps_done: int, max_steps: int) -> list[tuple[int, float]]:
    if state is None:
        return []
    res, points = state.results, []
    if res.lora and res.lora.eval_loss_before is not None:
        points.append((0, res.lora.eval_loss_before))
    if res.eval_after and res.eval_after.eval_loss_after is not None:
        points.append(
            (res.train.steps if res.train else max(steps_done, max_steps), res.eval_after.eval_loss_after)
        )
    return points


def _stage(log_text: str) -> tuple[str | None, int, int]:
    """(title, number, count) of the latest headed line in the run's printed output."""
    for line in reversed(log_text.splitlines()):
        found = _HEADED.match(line.strip())
        if found:
            return found.group(3), int(found.group(1)), int(found.group(2))
    return None, 0, 0


def read_progress(output_folder: Path, max_steps: int, log_text: str = "") -> Progress:
    """The progress of the run writing to ``output_folder`` (``log_text``: what it printed)."""
    records = read_log(Path(output_folder) / TRAINING_DIR / TRAINING_LOG)
    state = RunState.read(Path(output_folder)) if Path(output_folder).is_dir() else None
    train = [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r and "step" in r]
    step = max((int(r["step"]) for r in records if "step" in r), default=0)
    if state is not None and state.results.train is not None:
        step = max(step, state.results.train.steps)
    per_step, tokens = training_rate(records)
    title, number, count = _stage(log_text)
    progress = Progress(
        max_steps=max_steps,
        step=step,
        stage=title,
        stage_number=number,
        stage_count=count,
        status=state.status if state else None,
        completed=list(state.completed) if state else [],
        train=train,
        held_out=_held_out(state, step, max_steps),
        tokens_per_s=tokens,
    )
    if per_step is not None and "train" not in progress.completed:
        progress.eta_s = per_step * max(0, max_steps - step)
    return progress


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a run's printed output; a progress bar shows only its latest state."""
    if not path.is_file():
        return ""
    raw = path.read_text(encoding="utf-8", errors="replace")
    shown: list[str] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        line = line.rsplit("\r", 1)[-1]  # a bar redrawn in place with carriage returns
        if not line.strip():
            continue
        bar = _BAR.match(line)
        if bar and shown and (_BAR.match(shown[-1]) or [None, None])[1] == bar[1]:
            shown[-1] = line  # a bar redrawn on new lines: keep its latest state
        else:
            shown.append(line)
    return "\n".join(shown[-lines:])


def run_report(output_folder: Path, config: RunConfig) -> ReportData | None:
    """The run report's facts (probe answers, exports, verification, commands) from the state file, as
    ``report.html`` shows them; None before the run has written a state file."""
    from tunesmith.recipe.pipeline import STAGES
    from tunesmith.recipe.summary import report_data

    state = RunState.read(Path(output_folder)) if Path(output_folder).is_dir() else None
    if state is None:
        return None
    ctx = RunContext(config=config, state=state, stage_count=len(STAGES), write_report=lambda *_: None)
    return report_data(ctx, state.status)
