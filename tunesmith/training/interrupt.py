"""Ctrl-C during training: finish the current step, save a checkpoint and the loss curve, then stop.

The first Ctrl-C only raises a flag; a trainer callback sees it at the end of the step and asks the
trainer to save and stop, so the run can be resumed from exactly there. A second Ctrl-C stops at once
(the last periodic checkpoint is then where a re-run resumes).

Under several processes (``tunesmith run --gpus N``) the launcher passes each Ctrl-C on to every rank; the
ranks agree at each step end whether any of them was asked, so that all stop after the same step (a rank
that stopped alone would leave the others waiting inside the next step's gradient exchange).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from transformers import TrainerCallback

from tunesmith._distributed import is_distributed, is_main_process
from tunesmith._signals import sigint_handler
from tunesmith.training.distributed import any_process

__all__ = ["StopOnInterrupt", "graceful_interrupt"]


class StopOnInterrupt(TrainerCallback):
    """Saves a checkpoint and ends training at the first step end after :attr:`requested` is set."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        """Turn a pending interrupt into save + stop (the trainer then writes the checkpoint)."""
        if is_distributed():
            self.requested = any_process(self.requested, args.device)
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


@contextlib.contextmanager
def graceful_interrupt(callback: StopOnInterrupt) -> Iterator[StopOnInterrupt]:
    """While inside, the first SIGINT sets ``callback.requested``; the second raises KeyboardInterrupt."""

    def handler(signum, frame):
        if callback.requested:
            raise KeyboardInterrupt
        callback.requested = True
        if not is_main_process():  # rank 0 speaks for the run
            return
        print(
            "\nCtrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to stop at "
            "once).",
            file=sys.stderr,
            flush=True,
        )

    with sigint_handler(handler):
        yield callback
