"""tunesmith.recipe: ``tunesmith run CONFIG`` — the config schema, the run pipeline and its report."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunConfig": "tunesmith.recipe.config",
    "load_config": "tunesmith.recipe.config",
    "run": "tunesmith.recipe.pipeline",
    "RunResult": "tunesmith.recipe.pipeline",
    "write_report": "tunesmith.recipe.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunesmith.recipe' has no attribute {name!r}")
