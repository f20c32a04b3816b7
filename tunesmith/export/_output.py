"""Checks on where an export goes, run before any long work: the folder, the file name, the free space."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tunesmith.errors import TunesmithError

__all__ = ["check_output_dir", "check_file_stem", "check_free_space", "disk_full_as_error"]


def check_output_dir(save_directory: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder as a Path; refuses a file, or a folder with files in it unless ``overwrite``."""
    path = Path(save_directory).expanduser()
    if path.exists() and not path.is_dir():
        raise TunesmithError(
            f"The output path {path} is a file, not a folder. Pass a folder name (it is created if missing)."
        )
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise TunesmithError(
            f"The output folder {path} already exists and is not empty. Choose a new folder, empty it, or "
            "pass overwrite=True (CLI: --overwrite) to replace what tunesmith writes there."
        )
    return path


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
    """Turn "no space left on device" while writing ``target`` into a clear error (partial files are
    removed by the atomic writers before this runs)."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise TunesmithError(
            f"The disk filled up while writing {target}; the partial output was removed. Free some space "
            "or choose another output folder, then export again."
        ) from err
