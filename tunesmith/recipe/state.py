"""The output folder of a run and its state file: which stages finished, and what they found.

``run-state.json`` is rewritten atomically after every stage. It lets a re-run of the same command
resume an interrupted or failed run (finished stages are not repeated; training continues from its
last checkpoint), and it lets tunesmith refuse to mix two different runs in one folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith._atomic import atomic_file, remove_stale_partials
from tunesmith.errors import TunesmithError
from tunesmith.recipe.results import RunResults

__all__ = ["RunState", "STATE_FILE", "open_output_folder", "check_output_folder", "config_fingerprint"]

STATE_FILE = "run-state.json"


def config_fingerprint(config_json: dict[str, Any]) -> str:
    """A hash of everything in the config that changes the result (``output.overwrite`` does not)."""
    relevant = json.loads(json.dumps(config_json))
    relevant.get("output", {}).pop("overwrite", None)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """What ``run-state.json`` records."""

    folder: Path
    fingerprint: str
    status: str = "running"  # running | interrupted | failed | unverified | finished
    completed: list[str] = field(default_factory=list)
    results: RunResults = field(default_factory=RunResults)
    resumed: bool = False
    writer: bool = True  # False on the ranks of a multi-process run other than rank 0: they read only

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished in this or an earlier attempt."""
        return stage in self.completed

    def complete(self, stage: str, result: Any = None) -> None:
        """Record a stage's result (a ``RunResults`` record, or None) and save.

        The stage counts as finished unless its result says it could not finish (``finished`` False):
        that result is kept for the report, and a re-run does the stage again.
        """
        if result is not None:
            setattr(self.results, stage, result)
        if getattr(result, "finished", True) and stage not in self.completed:
            self.completed.append(stage)
        self.save()

    def save(self) -> None:
        """Write the state file atomically (rank 0 alone in a multi-process run)."""
        if not self.writer:
            return
        payload = {
            "fingerprint": self.fingerprint,
            "status": self.status,
            "completed": self.completed,
            "results": self.results.to_json(),
        }
        with atomic_file(self.folder / STATE_FILE, "w") as handle:
            json.dump(payload, handle, indent=2, ensure_ascii=False)

    @classmethod
    def read(cls, folder: Path) -> RunState | None:
        """The state in ``folder`` (``resumed`` set), or None when there is none or it cannot be read."""
        path = folder / STATE_FILE
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                folder=folder,
                fingerprint=payload.get("fingerprint"),
                status=payload.get("status"),
                completed=list(payload.get("completed", [])),
                results=RunResults.from_json(payload.get("results", {})),
                resumed=True,
            )
        except (OSError, ValueError, TypeError, AttributeError):  # JSONDecodeError is a ValueError
            return None


def open_output_folder(folder: Path, fingerprint: str, overwrite: bool) -> RunState:
    """Start a run in ``folder``: a fresh one, a resumed one, or a clear refusal.

    - missing or empty folder: a fresh run;
    - an unfinished run of the same config: resume it;
    - a finished run, or a run of another config: refuse, unless ``overwrite`` (then start afresh);
    - files that are not a tunesmith run: always refuse (tunesmith never deletes what it did not write).
    """
    check_output_folder(folder)
    previous = RunState.read(folder) if folder.is_dir() else None
    if folder.is_dir() and any(folder.iterdir()) and previous is None:
        entries = sorted(p.name for p in folder.iterdir())
        raise TunesmithError(
            f"The output folder {folder} already holds files that are not from a tunesmith run "
            f"({', '.join(entries[:3])}{' ...' if len(entries) > 3 else ''}; there is no {STATE_FILE}). "
            "tunesmith does not delete them: choose another folder with --set output.folder=PATH."
        )
    if previous is not None and previous.status != "finished" and not previous.completed:
        previous = None  # it failed before any stage finished: nothing to keep, so a fix starts afresh
    if previous is not None and overwrite:
        shutil.rmtree(folder)
        previous = None
    if previous is not None:
        _check_resumable(folder, previous, fingerprint)
        previous.status = "running"
    folder.mkdir(parents=True, exist_ok=True)
    state = previous or RunState(folder=folder, fingerprint=fingerprint)
    state.save()
    return state


def check_output_folder(folder: Path) -> None:
    """Refuse an output folder that is a file or cannot be written; remove partial files that a killed
    run left behind (the run's dry run and the run itself call this)."""
    from tunesmith.export._output import check_writable

    if folder.exists() and not folder.is_dir():
        raise TunesmithError(f"The output folder {folder} is a file. Set output.folder to a folder path.")
    check_writable(folder)
    for stale in remove_stale_partials(folder):
        print(f"Removed {stale}, left behind by an interrupted run.", file=sys.stderr)


def _check_resumable(folder: Path, previous: RunState, fingerprint: str) -> None:
    """Refuse a finished run or a run of another config (the message says what to do)."""
    if previous.status == "finished":
        raise TunesmithError(
            f"The output folder {folder} holds a finished run (see {folder / 'report.html'}). "
            "Run with --overwrite to replace it, or choose another folder with --set output.folder=PATH."
        )
    if previous.fingerprint != fingerprint:
        raise TunesmithError(
            f"The output folder {folder} holds an unfinished run of a different config, so it cannot be "
            "resumed with this one. Run with --overwrite to start afresh there, or choose another folder "
            "with --set output.folder=PATH."
        )
