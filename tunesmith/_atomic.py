"""Write files and folders so that nothing half-written is ever visible: write to a temporary name, then
rename.

Every temporary name is hidden and marked with the writer's process id: ``.NAME.<pid>-<random>.partial``
beside the target ``NAME`` (a folder being replaced waits as ``.NAME.<pid>-old.partial``), so
``partial_glob`` finds what a killed process left behind and ``remove_stale_partials`` removes what no
living process is writing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "atomic_file",
    "atomic_dir",
    "scratch_dir",
    "replace_dir",
    "partial_glob",
    "live_partials",
    "remove_stale_partials",
]

PARTIAL_SUFFIX = ".partial"
_WRITER = re.compile(r"\.(\d+)-\w*\.partial$")


def partial_glob(name_pattern: str) -> str:
    """The glob for the temporary names of targets named ``name_pattern`` (e.g. ``checkpoint-*``)."""
    return f".{name_pattern}.*{PARTIAL_SUFFIX}"


def _writer_pid(name: str) -> int | None:
    """The process id in a temporary name, or None for a name without one (an older tunesmith's)."""
    match = _WRITER.search(name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's living process
        return True
    return True


def _partials(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX))


def live_partials(folder: str | os.PathLike) -> list[Path]:
    """The temporary files or folders in ``folder`` that a living process is still writing."""
    return [p for p in _partials(Path(folder)) if (pid := _writer_pid(p.name)) is not None and _alive(pid)]


def remove_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` whose writer is dead (killed mid-write);
    returns what was removed."""
    live = set(live_partials(folder))
    stale = [p for p in _partials(Path(folder)) if p not in live]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return stale


def _temporary_beside(path: Path, *, folder: bool) -> Path:
    """A new empty file or folder named ``.NAME.<pid>-<random>.partial`` in the folder of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}-"
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=PARTIAL_SUFFIX, dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=PARTIAL_SUFFIX, dir=path.parent)
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
        old = target.with_name(f".{target.name}.{os.getpid()}-old{PARTIAL_SUFFIX}")
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
