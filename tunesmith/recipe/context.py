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

from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.state import RunState

__all__ = ["RunContext", "TRAINING_DIR", "LOSS_PNG", "model_name"]

TRAINING_DIR = "training"  # checkpoints, training_log.jsonl and loss.png
LOSS_PNG = f"{TRAINING_DIR}/loss.png"


@dataclass
class RunContext:
    """What the stages hand to each other: the config, the folder state and the live objects."""

    config: RunConfig
    state: RunState
    stage_count: int
    model: Any = None
    tokenizer: Any = None
    prepared: Any = None  # tunesmith.data prepared train/eval sets and their statistics
    trainer: Any = None
    stage_number: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def folder(self) -> Path:
        return self.state.folder

    def stage(self, key: str, title: str, body: Callable[[RunContext], Any], *, once: bool = False) -> None:
        """Run one stage: print its headed line, time it, record its result, name it in any failure.

        ``once`` stages (their result is all that matters, e.g. probe answers) are skipped when an
        earlier attempt finished them; the others rebuild live objects (model, trainer) every time.
        """
        self.stage_number += 1
        head = f"[{self.stage_number}/{self.stage_count}] {title}"
        if once and self.state.done(key):
            print(f"{head} ... done in the earlier attempt", flush=True)
            return
        print(f"{head} ...", flush=True)
        start = time.perf_counter()
        try:
            result = body(self)
        except TunesmithError as err:
            self._fail(key, title)
            raise TunesmithError(
                f"Stage {self.stage_number}/{self.stage_count} ({title}) failed: {err} {self._kept()}"
            ) from err
        except KeyboardInterrupt:
            self._stop(
                "interrupted", f"interrupted during stage {self.stage_number}/{self.stage_count} ({title})"
            )
            raise
        except Exception as err:
            self._fail(key, title)
            raise TunesmithError(
                f"Stage {self.stage_number}/{self.stage_count} ({title}) failed with an unexpected "
                f"{type(err).__name__}: {err}. {self._kept()} Run again with --debug for the traceback."
            ) from err
        self.seconds[title] = self.seconds.get(title, 0.0) + time.perf_counter() - start
        if not self.interrupted:
            self.state.complete(key, result)

    def _kept(self) -> str:
        return (
            f"What earlier stages produced is kept in {self.folder} (report.md lists it); fix the cause "
            "and run the same command again to continue from there."
        )

    def _fail(self, key: str, title: str) -> None:
        self._stop("failed", f"failed at stage {self.stage_number}/{self.stage_count} ({title})")

    def _stop(self, status: str, text: str) -> None:
        self.state.status = status
        self.state.save()
        try:
            from tunesmith.recipe.report import write_report
            from tunesmith.recipe.summary import report_data

            write_report(report_data(self, text), self.folder)
        except Exception as err:  # a partial report must never hide why the run stopped
            print(f"    (could not write the partial report: {err})", file=sys.stderr)


def model_name(ctx: RunContext) -> str:
    """The exported model's name (Ollama and file names): ``export.name`` or the output folder's name."""
    raw = ctx.config.export.name or ctx.folder.resolve().name
    return re.sub(r"[^a-z0-9._-]+", "-", raw.lower()).strip("-._") or "tunesmith-model"
