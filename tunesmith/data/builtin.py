"""Data sets shipped inside the package (see ``tunesmith/assets/data/README.md`` for their licences)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tunesmith.errors import TunesmithError, closest_name

__all__ = ["builtin_dataset_path", "BUILTIN_DATASETS"]

BUILTIN_DATASETS = {"medquad_en": "medquad_en.jsonl", "medquad_pref_en": "medquad_pref_en.jsonl"}


def builtin_dataset_path(name: str = "medquad_en") -> Path:
    """The path of a built-in data set file (``"medquad_en"``: 800 English medical Q&A rows;
    ``"medquad_pref_en"``: 200 preference pairs made from them; both CC BY 4.0)."""
    if name not in BUILTIN_DATASETS:
        hint = closest_name(name, BUILTIN_DATASETS)
        raise TunesmithError(
            f"There is no built-in data set '{name}'"
            + (f" (did you mean '{hint}'?)" if hint else "")
            + f". Built-in: {', '.join(BUILTIN_DATASETS)}."
        )
    path = Path(str(resources.files("tunesmith") / "assets" / "data" / BUILTIN_DATASETS[name]))
    if not path.is_file():
        raise TunesmithError(f"The built-in data file {path} is missing; reinstall tunesmith.")
    return path
