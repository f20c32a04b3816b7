"""Where tunesmith keeps its cache (converted models): ``$TUNESMITH_HOME``, default ``~/.cache/tunesmith``."""

from __future__ import annotations

import os
from pathlib import Path


def tunesmith_home() -> Path:
    """The cache folder, created on first use."""
    home = Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".cache" / "tunesmith").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
