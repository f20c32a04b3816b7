"""``tunesmith run CONFIG --gpus N``: one process per GPU, started by torch's own launcher.

The command checks ``--gpus`` against the cards it sees, then starts :mod:`tunesmith.recipe._agent`
(torchrun's elastic agent) as a child process, which runs ``tunesmith run`` once per rank.
``--device cpu`` runs the same path on CPU processes (gloo) with no GPU visible to the ranks, as the
tests do. Each rank that fails with an error writes it to a shared temporary folder; a rank that dies is
reported by the agent; either way the launcher raises one :class:`TunesmithError` and the agent has
already stopped the other ranks.

Ctrl-C is this process's to pass on. The agent runs in a session of its own, as torch starts each rank,
so a terminal's Ctrl-C reaches this process alone (the agent, left to itself, would end every rank at once
with SIGTERM, and while it starts up it would print a traceback). This process sends each Ctrl-C to every
rank (each leaves its process id in the shared folder): the first makes all ranks stop after the same step
with a checkpoint, the second stops them at once, as in one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from tunesmith._distributed import rank
from tunesmith._signals import sigint_handler
from tunesmith.constants import EXIT_INTERRUPTED
from tunesmith.errors import TunesmithError

__all__ = ["launch", "check_gpus", "write_rank_error", "write_rank_pid", "ERROR_DIR_ENV", "DEVICES"]

ERROR_DIR_ENV = "TUNESMITH_RANK_ERRORS"  # where ranks started by `tunesmith run --gpus` leave their errors
DEVICES = ("cuda", "cpu")
_FAILURES = "failures.json"
# After a second Ctrl-C the ranks have this long to write their state before the agent stops them.
_AT_ONCE_S = 10.0


def check_gpus(gpus: int, device: str) -> None:
    """Refuse a ``--gpus`` count this machine cannot run, before any work starts."""
    import torch

    if gpus < 1:
        raise TunesmithError(f"--gpus {gpus}: give the number of GPUs to train on, 1 or more.")
    if device == "cpu":
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > visible:
        seen = f"{visible} GPU(s)" if visible else "no CUDA GPU (or a CPU-only torch build)"
        hint = (
            f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
            if "CUDA_VISIBLE_DEVICES" in (os.environ)
            else ""
        )
        raise TunesmithError(
            f"--gpus {gpus} asks for more GPUs than this machine shows: it sees {seen}{hint}. Use --gpus "
            f"{max(visible, 1)} or fewer{'' if visible else ', or --device cpu to run the ranks on the CPU'}."
        )
    from tunesmith.training.distributed import require_nccl, require_one_card_type

    if gpus > 1:
        require_nccl()
        require_one_card_type([torch.cuda.get_device_name(i) for i in range(gpus)])


def launch(rank_arguments: list[str], gpus: int, device: str, folder: Path) -> int:
    """Run ``tunesmith run rank_arguments`` on ``gpus`` processes; 0 when every rank finished.

    ``folder`` is the run's output folder (named in the error so the user knows where to resume from).
    """
    check_gpus(gpus, device)
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the ranks see no GPU: gloo, CPU tensors
    with tempfile.TemporaryDirectory(prefix="tunesmith-ranks-") as tmp:
        env[ERROR_DIR_ENV] = tmp
        cmd = [sys.executable, "-m", "tunesmith.recipe._agent", str(Path(tmp) / _FAILURES), str(gpus)]
        agent = subprocess.Popen([*cmd, *rank_arguments], env=env, start_new_session=True)
        with _passing_ctrl_c_to_ranks(Path(tmp), agent) as interrupts:
            code = agent.wait()
        if code == 0:
            return 0
        if interrupts:  # rank 0 has said where the run stopped and how to resume it, if it had started
            if not _rank_pids(Path(tmp)):
                print("Stopped before the training processes had started.", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise TunesmithError(_failure_message(Path(tmp), gpus, code, folder))


@contextlib.contextmanager
def _passing_ctrl_c_to_ranks(tmp: Path, agent: subprocess.Popen) -> Iterator[list[int]]:
    """While inside, every SIGINT goes on to the ranks; the yielded list counts them."""
    interrupts: list[int] = []

    def handler(signum, frame):
        interrupts.append(signum)
        pids = _rank_pids(tmp)
        if not pids:  # no rank has started yet: nothing to save, so the agent stops them all
            agent.terminate()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        if len(interrupts) == 2:  # "at once": a rank caught inside a collective cannot see its Ctrl-C
            timer = threading.Timer(_AT_ONCE_S, agent.terminate)
            timer.daemon = True
            timer.start()

    with sigint_handler(handler):
        yield interrupts


def write_rank_pid() -> None:
    """In a rank started by ``tunesmith run --gpus``, leave this process's id for the launcher's Ctrl-C."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        (Path(folder) / f"pid-{rank()}.txt").write_text(str(os.getpid()), encoding="utf-8")


def _rank_pids(tmp: Path) -> list[int]:
    pids = []
    for path in tmp.glob("pid-*.txt"):
        with contextlib.suppress(OSError, ValueError):  # a file being written: that rank is just starting
            pids.append(int(path.read_text(encoding="utf-8")))
    return pids


def write_rank_error(err: BaseException) -> bool:
    """In a rank started by ``tunesmith run --gpus``, leave ``err`` for the launcher; False elsewhere."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return False
    (Path(folder) / f"rank-{rank()}.txt").write_text(str(err), encoding="utf-8")
    return True


def _failure_message(tmp: Path, gpus: int, code: int, folder: Path) -> str:
    resume = (
        f"The other processes were stopped; what earlier steps produced is kept in {folder}, and the same "
        "command resumes from the last checkpoint."
    )
    errors = sorted(tmp.glob("rank-*.txt"), key=_rank_of)
    failed = json.loads((tmp / _FAILURES).read_text()) if (tmp / _FAILURES).is_file() else []
    # A rank killed from outside (not by the agent's own SIGTERM) left no error of its own, and the errors
    # the other ranks wrote are its echo (a peer's connection reset): the killed rank is the cause.
    with_error = {_rank_of(p) for p in errors}
    killed = [f for f in failed if f["signal"] not in (None, "SIGTERM") and f["rank"] not in with_error]
    if errors and not killed:
        first = errors[0]
        text = first.read_text(encoding="utf-8").strip()
        return f"Process {first.stem.replace('-', ' ')} of {gpus} stopped: {text}"
    if failed:
        f = (killed or failed)[0]
        how = f"was killed by {f['signal']}" if f["signal"] else f"exited with code {f['exitcode']}"
        cause = " (out of memory, or killed from outside)" if f["signal"] == "SIGKILL" else ""
        return f"Training process rank {f['rank']} of {gpus} {how}{cause}. {resume}"
    return f"The launcher of the {gpus} training processes exited with code {code}. {resume}"


def _rank_of(error_file: Path) -> int:
    """The rank that wrote ``rank-N.txt``."""
    return int(error_file.stem.split("-")[1])
