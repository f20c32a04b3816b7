"""The process group of a multi-process run: started with a bounded timeout, checked, and torn down.

torch.distributed and accelerate do all communication; this module only starts the group (NCCL on GPUs,
gloo on CPUs) before the model and trainer need it, refuses set-ups that cannot train together (no NCCL,
mixed GPU types), offers a barrier for stages one process does alone, and ends a process whose launcher
died, so that no rank is left behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from tunesmith._distributed import is_distributed, local_rank, rank, world_size
from tunesmith.errors import TunesmithError

__all__ = [
    "start_process_group",
    "end_process_group",
    "barrier",
    "any_process",
    "exit_with_parent",
    "require_nccl",
    "require_one_card_type",
    "fault_injection",
    "DEFAULT_TIMEOUT_S",
    "FAULT_ENV",
]

DEFAULT_TIMEOUT_S = 1800  # transformers' ddp_timeout default: the longest any rank waits for the others
_PARENT_POLL_S = 0.5
# "RANK:STEP": that rank kills itself with SIGKILL as optimizer step STEP begins (tests of rank failure).
FAULT_ENV = "TUNESMITH_DISTRIBUTED_FAULT"


def require_nccl() -> None:
    """Raise a clear error when this torch build cannot talk between GPUs."""
    if not (dist.is_available() and dist.is_nccl_available()):
        raise TunesmithError(
            f"Training on several GPUs needs NCCL, which this torch build ({torch.__version__}) lacks. "
            "Install a CUDA build of torch (it ships NCCL), or train on one GPU without --gpus."
        )


def require_one_card_type(names: list[str]) -> None:
    """Refuse GPUs of different kinds: data-parallel ranks wait for the slowest, and bf16 or memory plans
    made for one card do not fit another."""
    if len(set(names)) > 1:
        listed = ", ".join(f"GPU {i}: {name}" for i, name in enumerate(names))
        raise TunesmithError(
            f"The GPUs of this run are of different types ({listed}). Train on cards of one type: pick them "
            "with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=0,1) and a matching --gpus."
        )


def start_process_group(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Start the process group of a multi-process run (no-op alone or when it exists); True if started.

    accelerate and the Trainer then use this group. On GPUs each process takes the card of its LOCAL_RANK.
    """
    if not is_distributed() or dist.is_initialized():
        return False
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        require_nccl()
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
    if on_gpu:
        names: list[str | None] = [None] * world_size()
        dist.all_gather_object(names, torch.cuda.get_device_name(local_rank()))
        require_one_card_type([str(n) for n in names])
    return True


def end_process_group() -> None:
    """Tear the process group down (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (no-op alone); bounded by the group's timeout."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` is set on any process (``flag`` itself alone); ``device`` is the one the group's
    backend talks through (the rank's GPU under NCCL)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def exit_with_parent() -> None:
    """End this process at once if the process that started it dies (a killed launcher leaves no rank)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="tunesmith-exit-with-parent", daemon=True).start()


class _KillAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def fault_injection() -> list[TrainerCallback]:
    """The callback ``TUNESMITH_DISTRIBUTED_FAULT`` asks for on this rank (usually none)."""
    wanted = os.environ.get(FAULT_ENV, "")
    victim, _, step = wanted.partition(":")
    if not (victim.isdigit() and step.isdigit()) or int(victim) != rank():
        return []
    return [_KillAtStep(int(step))]
