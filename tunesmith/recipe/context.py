"""The state a run's stages share, and the stage runner: headed line, timing, state file, failures.

A stage that fails is named in the error, and the run's state and a partial report are written first,
so what earlier stages produced stays in the output folder and a re-run continues from there.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith._distributed import is_main_process
from tunesmith.errors import TunesmithError, out_of_space
from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.state import RunState

__all__ = ["RunContext", "Stage", "TRAINING_DIR", "LOSS_PNG", "REWARDS_PNG", "SAMPLES_JSON", "model_name"]

TRAINING_DIR = "training"  # checkpoints, training_log.jsonl and loss.png
LOSS_PNG = f"{TRAINING_DIR}/loss.png"
REWARDS_PNG = f"{TRAINING_DIR}/rewards.png"  # DPO/ORPO: reward margin and accuracy; GRPO: rewards, lengths
SAMPLES_JSON = f"{TRAINING_DIR}/samples.json"  # GRPO: completions from the first and the last step


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its key in the state file (a ``RunResults`` attribute when it has a result),
    its headed line (text, or made from the config), and the function that does it.

    ``once`` stages (their result is all that matters, e.g. probe answers) are skipped when an earlier
    attempt finished them; the others rebuild live objects (model, trainer) every time. ``main_only``
    stages run on rank 0 alone in a multi-process run (they write files or ask llama.cpp; no collective).
    """

    key: str
    title: str | Callable[[RunConfig], str]
    body: Callable[[RunContext], Any]
    once: bool = False
    main_only: bool = False

    def heading(self, config: RunConfig) -> str:
        """The stage's title for this config."""
        return self.title(config) if callable(self.title) else self.title


@dataclass
class RunContext:
    """What the stages hand to each other: the config, the folder state and the live objects.

    ``write_report(ctx, status)`` writes the report; the context calls it when a run stops early.
    """

    config: RunConfig
    state: RunState
    stage_count: int
    write_report: Callable[[RunContext, str], Any]
    model: Any = None
    tokenizer: Any = None
    prepared: Any = None  # tunesmith.data prepared train/eval sets and their statistics
    trainer: Any = None
    # The probes' answers when a held-out stage answered them in its own batch, for the probe stage next.
    probe_answers: list[str] | None = None
    stage_number: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def folder(self) -> Path:
        """The run's output folder."""
        return self.state.folder

    def run_stage(self, stage: Stage) -> None:
        """Run one stage: print its headed line, time it, record its result, name it in any failure."""
        self.stage_number += 1
        title = stage.heading(self.config)
        where = f"{self.stage_number}/{self.stage_count} ({title})"
        head = f"[{self.stage_number}/{self.stage_count}] {title}"
        if stage.main_only and not is_main_process():
            return
        if stage.once and self.state.done(stage.key):
            print(f"{head} ... done in the earlier attempt", flush=True)
            return
        print(f"{head} ...", flush=True)
        start = time.perf_counter()
        try:
            result = stage.body(self)
        except TunesmithError as err:
            self.stop("failed", f"failed at stage {where}")
            raise TunesmithError(f"Stage {where} failed: {err} {self._kept()}") from err
        except KeyboardInterrupt:
            self.stop("interrupted", f"interrupted during stage {where}")
            if is_main_process():  # rank 0 speaks for the run
                print(self._stopped_at_once(where), file=sys.stderr, flush=True)
            raise
        except Exception as err:
            self.stop("failed", f"failed at stage {where}")
            full = out_of_space(err, self.folder)
            if full is not None:
                raise TunesmithError(f"Stage {where} failed: {full} {self._kept()}") from err
            raise TunesmithError(
                f"Stage {where} failed with an unexpected {type(err).__name__}: {err}. {self._kept()} "
                "Run again with --debug for the traceback."
            ) from err
        self.seconds[title] = self.seconds.get(title, 0.0) + time.perf_counter() - start
        if not self.interrupted:
            self.state.complete(stage.key, result)

    def stop(self, status: str, text: str) -> None:
        """End the run early: save ``status`` in the state file and write a partial report saying ``text``."""
        self.state.status = status
        self.state.save()
        if not is_main_process():
            return
        try:
            self.write_report(self, text)
        except Exception as err:  # a partial report must never hide why the run stopped
            print(f"    (could not write the partial report: {err})", file=sys.stderr)

    def last_checkpoint(self) -> Path | None:
        """The newest complete training checkpoint of this run, where a re-run resumes training."""
        if not (self.folder / TRAINING_DIR).is_dir():
            return None  # before training: no checkpoint, and no import of the trainer's libraries
        from tunesmith.training.checkpoint import latest_checkpoint

        return latest_checkpoint(self.folder / TRAINING_DIR)

    def _stopped_at_once(self, where: str) -> str:
        resume = "training, if it had started, starts again from its first step (no checkpoint was saved yet)"
        try:
            checkpoint = self.last_checkpoint()
            if checkpoint is not None:
                resume = f"training continues from {checkpoint.relative_to(self.folder)}"
        except Exception:  # the same Ctrl-C can cut a library's import half-way, which cannot be repeated
            resume = "training continues from its newest checkpoint, if one was saved"
        return (
            f"Stopped at once during stage {where}. The run's state and report.md are in {self.folder}. "
            f"Run the same command again to resume: finished stages are not repeated, and {resume}."
        )

    def _kept(self) -> str:
        return (
            f"What earlier stages produced is kept in {self.folder} (report.md lists it); fix the cause "
            "and run the same command again to continue from there."
        )


def model_name(ctx: RunContext) -> str:
    """The exported model's name (Ollama and file names): ``export.name`` or the output folder's name."""
    raw = ctx.config.export.name or ctx.folder.resolve().name
    return re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-._") or "tunesmith-model"
