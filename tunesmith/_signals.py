"""``with sigint_handler(handler):`` Ctrl-C calls ``handler`` inside the block, and whatever handled it
before does so again after it.

Python sets signal handlers only from the main thread; elsewhere (a web app's worker thread, a test's
thread) the block runs with Ctrl-C handled as before.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["sigint_handler"]


@contextlib.contextmanager
def sigint_handler(handler: Callable[[int, object], None]) -> Iterator[None]:
    """While inside, SIGINT calls ``handler(signum, frame)``; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
