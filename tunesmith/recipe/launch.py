"""``tunesmith run CONFIG --gpus N``: one process per GPU, started by torch's own launcher.

The command checks ``--gpus`` against the cards it sees, then starts :mod:`tunesmith.recipe._agent`
(torchrun's elastic agent) as a child process, which runs ``tunesmith run`` once per rank.
``--device cpu`` runs the same path on CPU processes (gloo) with no GPU visible to the ranks, as the
tests do. Each rank that fails with an error writes it to a shared temporary folder; a rank that dies is
reported by the agent; either way the launcher raises one :class:`TunesmithError` and the agent has
already stopped the other ranks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tunesmith._distributed import rank
from tunesmith.errors import TunesmithError

__all__ = ["launch", "check_gpus", "write_rank_error", "ERROR_DIR_ENV", "DEVICES"]

ERROR_DIR_ENV = "TUNESMITH_RANK_ERRORS"  # where ranks started by `tunesmith run --gpus` leave their errors
DEVICES = ("cuda", "cpu")
_FAILURES = "failures.json"
_STOP_WAIT_S = 30


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
        agent = subprocess.Popen([*cmd, *rank_arguments], env=env)
        try:
            code = agent.wait()
        except KeyboardInterrupt:  # the agent saw the same Ctrl-C and stops its ranks
            _stop(agent)
            raise
        if code == 0:
            return 0
        raise TunesmithError(_failure_message(Path(tmp), gpus, code, folder))


def _stop(agent: subprocess.Popen) -> None:
    try:
        agent.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGKILL)
        agent.wait()


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
