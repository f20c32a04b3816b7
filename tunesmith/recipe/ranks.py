"""``tunesmith run`` in several processes (``--gpus N``, torchrun, ``accelerate launch``).

Every rank loads the model on its own device, prepares the same data and trains (DDP, through the Trainer);
rank 0 alone owns the output folder: the state file, the environment check, probes, exports, verification
and the report. The other ranks print nothing, read the state rank 0 opened and leave when training and the
held-out loss are done.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tunesmith._distributed import is_distributed, is_main_process
from tunesmith.recipe.launch import ERROR_DIR_ENV, write_rank_pid
from tunesmith.recipe.state import RunState, open_output_folder

__all__ = ["process_group", "open_state", "main_first"]


@contextlib.contextmanager
def process_group(timeout_s: float) -> Iterator[None]:
    """Start the process group for the run (no-op in one process) and tear it down when the run ends."""
    from tunesmith.training.distributed import end_process_group, exit_with_parent, start_process_group

    if not is_distributed():
        yield
        return
    if os.environ.get(ERROR_DIR_ENV):  # started by `tunesmith run --gpus`: end with the launcher
        exit_with_parent()
        write_rank_pid()
    start_process_group(timeout_s)
    if is_main_process():
        yield
    else:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            yield
    # Torn down after a finished run only: a failing rank exits (the launcher then stops the others), since
    # ending a group while another rank waits inside a collective can block.
    end_process_group()


def open_state(folder: Path, fingerprint: str, overwrite: bool) -> RunState:
    """The run's state: rank 0 opens (or resumes) the folder, the others then read it without writing."""
    with main_first():
        if is_main_process():
            return open_output_folder(folder, fingerprint, overwrite)
        state = RunState.read(folder)
    state.writer = False
    return state


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks together, so that what it caches (a GGUF converted
    to a folder, a hub download) is made once. transformers' ``save_pretrained`` writes no weights on a rank
    other than 0, so a conversion made there would be empty."""
    from tunesmith.training.distributed import barrier

    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()
