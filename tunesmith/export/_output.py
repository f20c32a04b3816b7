"""Checks on where an export goes, run before any long work: the folder, the file name, the free space."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tunesmith._atomic import live_partials, remove_stale_partials
from tunesmith.errors import TunesmithError, out_of_space

__all__ = ["check_output_dir", "check_writable", "check_file_stem", "check_free_space", "disk_full_as_error"]


def check_output_dir(save_directory: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder as a Path; refuses a file, a folder that cannot be written, a folder another
    export is writing into, or a folder with files in it unless ``overwrite``. Partial files that a killed
    export left behind are removed first."""
    path = Path(save_directory).expanduser()
    if path.exists() and not path.is_dir():
        raise TunesmithError(
            f"The output path {path} is a file, not a folder. Pass a folder name (it is created if missing)."
        )
    check_writable(path)
    for stale in remove_stale_partials(path):
        print(f"Removed {stale}, left behind by an interrupted export.", file=sys.stderr)
    busy = live_partials(path)
    if busy:
        raise TunesmithError(
            f"The output folder {path} is being written by another process ({busy[0].name} is its "
            "unfinished file). Wait for it to finish, or choose another folder."
        )
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        raise TunesmithError(
            f"The output folder {path} already exists and is not empty (it holds {_names(entries)}). "
            "Choose a new folder, empty it, or pass overwrite=True (CLI: --overwrite) to replace what "
            "tunesmith writes there."
        )
    return path


def _names(entries: list[str]) -> str:
    shown = ", ".join(entries[:3])
    return shown + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse before any long work when ``folder`` cannot be created or written: a path through a file, a
    read-only or immutable folder, a system folder such as /proc. Tried with a probe file, removed at once."""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise TunesmithError(
            f"The output folder {folder} cannot be created: {probe} is a file, not a folder. Choose an "
            "output path that does not pass through a file."
        )
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise TunesmithError(
            f"The output folder {folder} cannot be written: {probe} does not accept new files "
            f"({err.strerror or err}). Choose a folder you can write to (for example under your home "
            "folder), or fix its permissions."
        ) from None


def check_file_stem(name: str) -> str:
    """A file name stem without folders in it (the folder is a separate argument)."""
    bad = [sep for sep in {"/", "\\", os.sep, os.altsep or "/"} if sep in name]
    if not name or bad or name in {".", ".."} or name.startswith("."):
        raise TunesmithError(
            f"The file name {name!r} is not a plain file name"
            + (f" (it contains {bad[0]!r})" if bad else "")
            + ". Give the folder as save_directory and a name without path separators or a leading dot, "
            "for example name='my-model'."
        )
    return name


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """Refuse before writing when the disk holding ``folder`` has less than ``needed_bytes`` free."""
    check_writable(folder)  # a folder that cannot be written (/proc: 0 bytes free) is not a full disk
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise TunesmithError(
            f"Not enough disk space in {folder}: the export needs about {needed_bytes / 1e9:.2f} GB and "
            f"{free / 1e9:.2f} GB is free. Free some space or choose another output folder."
        )


@contextlib.contextmanager
def disk_full_as_error(target: Path) -> Iterator[None]:
    """Turn a write into ``target`` that fails for lack of room into a clear error (partial files are
    removed by the atomic writers before this runs)."""
    try:
        yield
    except Exception as err:  # OSError, or a Rust writer's error that carries "(os error N)"
        full = out_of_space(err, target)
        if full is None:
            raise
        raise full from err
