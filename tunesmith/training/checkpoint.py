"""Checkpoints that are never half-written: each is saved into a hidden temporary folder, then renamed.

transformers' Trainer writes ``checkpoint-N`` in place (weights, optimizer, scheduler, RNG state, trainer
state), so a crash mid-save leaves a folder that ``resume_from_checkpoint=True`` would pick up. Here the
whole save goes to ``.checkpoint-N.<random>.partial`` and is renamed to ``checkpoint-N`` only when complete;
``get_last_checkpoint`` never matches the hidden name, and leftovers are removed when training starts.
With several processes, rank 0 makes the one temporary folder and tells the others its name; every process
writes its part there (rank 0 the weights, optimizer and trainer state, each rank its random-number state),
and rank 0 renames it once all have finished.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from tunesmith._atomic import partial_glob, replace_dir, scratch_dir
from tunesmith.errors import TunesmithError

__all__ = ["AtomicCheckpointMixin", "remove_partial_checkpoints", "find_checkpoint"]


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> int:
    """Delete temporary checkpoint folders left by a run killed while saving; returns how many."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.glob(partial_glob(f"{PREFIX_CHECKPOINT_DIR}-*")) if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return len(stale)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir`` (None when there is none)."""
    found = get_last_checkpoint(str(output_dir)) if os.path.isdir(output_dir) else None
    return Path(found) if found else None


def find_checkpoint(resume_from_checkpoint, output_dir: str) -> str | None:
    """The checkpoint folder to resume from (``True``: the latest in ``output_dir``), or a clear error."""
    if resume_from_checkpoint in (None, False):
        return None
    if resume_from_checkpoint is True:
        last = latest_checkpoint(output_dir)
        if last is None:
            raise TunesmithError(
                f"resume_from_checkpoint=True, but {output_dir} holds no checkpoint-N folder to resume from. "
                "Train without resume_from_checkpoint, or point it at a checkpoint folder (save_steps sets "
                "how often checkpoints are written)."
            )
        return str(last)
    if not os.path.isdir(resume_from_checkpoint):
        raise TunesmithError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a folder. Check the path."
        )
    return str(resume_from_checkpoint)


class AtomicCheckpointMixin:
    """Mix into a ``transformers.Trainer`` subclass to make ``_save_checkpoint`` atomic (module docstring)."""

    _staging_dir: Path | None = None

    def _get_output_dir(self, trial):
        if self._staging_dir is not None:
            return str(self._staging_dir)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.accelerator.num_processes > 1:
            self._save_checkpoint_together(model, trial, run_dir, name)
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        with scratch_dir(run_dir / name) as staging:
            self._save_into(staging, model, trial)
            self._publish(staging / name, run_dir / name)
        self._rotate(run_dir)

    def _save_checkpoint_together(self, model, trial, run_dir: Path, name: str) -> None:
        """Every process writes into the one folder rank 0 made; rank 0 renames it when all are done."""
        from accelerate.utils import broadcast_object_list

        main = self.accelerator.is_main_process
        with contextlib.ExitStack() as stack:
            if main:
                run_dir.mkdir(parents=True, exist_ok=True)
                staged = [str(stack.enter_context(scratch_dir(run_dir / name)))]
            else:
                staged = [None]
            staging = Path(broadcast_object_list(staged, from_process=0)[0])
            self._save_into(staging, model, trial)
            self.accelerator.wait_for_everyone()
            if main:
                self._publish(staging / name, run_dir / name)
        if main:
            self._rotate(run_dir)
        self.accelerator.wait_for_everyone()  # nobody reads checkpoint-N before it is in place

    def _save_into(self, staging: Path, model, trial) -> None:
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None

    def _rotate(self, run_dir: Path) -> None:
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )

    def _publish(self, saved: Path, final: Path) -> None:
        """Rename the complete checkpoint into place (replacing an older save of the same step)."""
        if self.state.best_global_step:  # the trainer looked for the best checkpoint in the staging folder
            best = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best.exists() or best == final:
                self.state.best_model_checkpoint = str(best)
                self.state.save_to_json(str(saved / TRAINER_STATE_NAME))
        replace_dir(saved, final)
