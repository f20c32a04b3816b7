"""Write files and folders so that nothing half-written is ever visible: write to a temporary name, then
rename.

Every temporary name is hidden and marked: ``.NAME.<random>.partial`` beside the target ``NAME`` (a folder
being replaced waits as ``.NAME.old.partial``), so ``partial_glob`` finds what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_file", "atomic_dir", "scratch_dir", "replace_dir", "partial_glob"]

PARTIAL_SUFFIX = ".partial"


def partial_glob(name_pattern: str) -> str:
    """The glob for the temporary names of targets named ``name_pattern`` (e.g. ``checkpoint-*``)."""
    return f".{name_pattern}.*{PARTIAL_SUFFIX}"


def _temporary_beside(path: Path, *, folder: bool) -> Path:
    """A new empty file or folder named ``.NAME.<random>.partial`` in the folder of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` for writers that open the file by name (gguf, llama.cpp);
    on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    tmp = _temporary_beside(path, folder=False)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; on success it is renamed to ``path``, on error removed."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def scratch_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``, removed when the block ends, whether it fails or not."""
    tmp = _temporary_beside(Path(path), folder=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the complete folder ``source`` to ``target``, replacing an older ``target`` if there is one."""
    source, target = Path(source), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old{PARTIAL_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` survive a power cut; skipped where folders cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _temporary_beside(path, folder=True)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
