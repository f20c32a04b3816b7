"""This process's place in a multi-process run, as the launcher (torchrun, ``accelerate launch``,
``tunesmith run --gpus N``) states it in the environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``.

Read from the environment rather than from ``torch.distributed`` so that it holds before the process group
exists (the model is placed on its device before training starts the group).
"""

from __future__ import annotations

import os

__all__ = ["world_size", "rank", "local_rank", "is_distributed", "is_main_process"]


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """How many processes train together (1 when not launched by a distributed launcher)."""
    return max(1, _int_env("WORLD_SIZE", 1))


def rank() -> int:
    """This process's number among all processes (0 on the main process)."""
    return _int_env("RANK", 0)


def local_rank() -> int:
    """This process's number on its machine: the index of the GPU it uses."""
    return _int_env("LOCAL_RANK", 0)


def is_distributed() -> bool:
    """Whether more than one process trains together."""
    return world_size() > 1


def is_main_process() -> bool:
    """Whether this is the process that writes logs, reports and exports (rank 0)."""
    return rank() == 0
