"""Import bitsandbytes without a request to the hub.

bitsandbytes 0.49+ asks the hub for a compiled CPU kernel (``kernels-community/quantization-bitsandbytes``)
when it is imported on a CPU with AVX512-BF16 and the ``kernels`` package is there, which transformers 5.25
made a dependency: an HTTP request, and code from the hub loaded, at ``import peft``. tunesmith makes no
request unless the user names a hub model, so it imports bitsandbytes itself before anything else does, with
huggingface_hub's offline switch on for that import alone. The switch is a constant read once, when
huggingface_hub is imported; setting the constant is how its maintainers say to change it later. A kernel
already in the user's hub cache is still loaded. The warnings that then say the kernel is not cached (and
point to ``pip install kernels``, which is installed) are dropped for that import.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["import_bitsandbytes_offline"]

# The loggers that report the skipped download: bitsandbytes' CPU backend and kernels' trust check.
_DOWNLOAD_LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def import_bitsandbytes_offline() -> None:
    """Import bitsandbytes (once per process) with the hub offline; a later import changes nothing."""
    if "bitsandbytes" in sys.modules:
        return
    try:
        import huggingface_hub.constants as hub
    except ImportError:  # no hub client, so nothing can reach the hub
        return
    with _hub_offline(hub), _without_warnings(_DOWNLOAD_LOGGERS):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:  # as for peft: 4-bit loading says what is missing when it is asked for
            pass


@contextmanager
def _hub_offline(hub) -> Iterator[None]:
    """huggingface_hub in offline mode inside the block; the previous setting after it."""
    before = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = before


class _DropWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextmanager
def _without_warnings(names: tuple[str, ...]) -> Iterator[None]:
    """The named loggers' warnings are dropped inside the block; errors still show."""
    drop = _DropWarnings()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
