"""The app's files and its one training process: run folders, uploads, path safety, start/stop/resume.

Every run lives in its own folder under the app's folder (``runs/ui`` by default)::

    run-20261202-010203/
        data/<file>        the uploaded file (or a copy of the built-in example)
        run.yaml           the ``tunesmith run`` config the page's choices make
        ui-run.log         what the run printed
        output/            the run's output folder (state file, checkpoints, loss log, GGUF, report)

Training is ``python -m tunesmith run run.yaml`` in a child process, the same command a user types:
Stop sends it SIGINT (Ctrl-C: the pipeline finishes the step and keeps a checkpoint) and Resume runs the
same command again (the pipeline resumes). One run at a time, for the whole app.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.ui.i18n import text

__all__ = ["Workspace", "TrainingJob", "CONFIG_NAME", "LOG_NAME", "OUTPUT_DIR", "DATA_DIR", "inside"]

CONFIG_NAME = "run.yaml"
LOG_NAME = "ui-run.log"
OUTPUT_DIR = "output"
DATA_DIR = "data"
_MB = 1024 * 1024
_STOP_WAIT_S = 60.0  # a stopped run writes its checkpoint, state and report, then ends


def inside(path: str | os.PathLike, roots: list[Path], lang: str = "en") -> Path:
    """``path`` resolved (links followed), if it lies in one of ``roots``; else a TunesmithError."""
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved == root.resolve() or resolved.is_relative_to(root.resolve()):
            return resolved
    raise TunesmithError(text(lang, "outside", path=resolved))


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` or anything in it."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.rglob("*"))])


class Workspace:
    """The app's folder: where run folders are made, uploads are kept, and what may be read or served."""

    def __init__(self, root: str | os.PathLike, max_upload_mb: float = 50.0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_mb = max_upload_mb
        self._lock = threading.Lock()

    def remove_drafts(self, older_than_s: float = 3600.0) -> list[Path]:
        """Delete draft run folders (data chosen, no run ever started in them) untouched for ``older_than_s``:
        an upload left by a closed page. Returns the folders removed."""
        cutoff, removed = time.time() - older_than_s, []
        for folder in self.root.glob("run-*"):
            if folder.is_dir() and not (folder / CONFIG_NAME).exists() and _newest_change(folder) < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def new_run_folder(self) -> Path:
        """A fresh, empty run folder ``run-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``... when taken)."""
        with self._lock:
            stamp = time.strftime("run-%Y%m%d-%H%M%S")
            folder, n = self.root / stamp, 1
            while folder.exists():
                n += 1
                folder = self.root / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            return folder

    def check_upload(self, path: str | os.PathLike, lang: str = "en") -> None:
        """Refuse a file over the upload limit (one paragraph naming its size and the limit)."""
        size = Path(path).stat().st_size
        if size > self.max_upload_mb * _MB:
            raise TunesmithError(
                text(
                    lang,
                    "upload_too_large",
                    name=Path(path).name,
                    size=f"{size / _MB:.1f}",
                    limit=f"{self.max_upload_mb:g}",
                )
            )

    def keep_data(self, source: str | os.PathLike, run_folder: Path, lang: str = "en") -> Path:
        """Copy a data file (an upload or the built-in example) into ``run_folder/data/``, in place of any
        file chosen there before; its new path."""
        self.check_upload(source, lang)
        target = run_folder / DATA_DIR / Path(source).name
        if Path(source).resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            for earlier in target.parent.iterdir():
                if earlier.is_file() and earlier.name != target.name:
                    earlier.unlink()  # a run trains on one file: the folder keeps only that one
            shutil.copyfile(source, target)
        return target

    def allowed_roots(self, model_name: str | None = None) -> list[Path]:
        """What the app may read or serve: its own folder and, when a local model is chosen, its folder."""
        roots = [self.root]
        if model_name:
            path = Path(model_name).expanduser()
            if path.exists():
                roots.append(path.resolve() if path.is_dir() else path.resolve().parent)
        return roots


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TrainingJob:
    """The one ``tunesmith run`` child process of the app (thread-safe; one at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.folder: Path | None = None  # the run folder of the latest run started
        self.stopping = False  # Stop was pressed: the run is saving its checkpoint and ending

    @property
    def running(self) -> bool:
        """Whether the child process is still going."""
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """The child's exit status (None while it runs or before any run): 0 finished, 130 stopped."""
        return None if self.process is None else self.process.poll()

    def start(self, run_folder: Path, lang: str = "en") -> None:
        """Run ``python -m tunesmith run run_folder/run.yaml``; refuse while another run is going."""
        self.settle()
        with self._lock:
            if self.running:
                raise TunesmithError(text(lang, "already_running", folder=self.folder))
            self.stopping = False
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            log = (run_folder / LOG_NAME).open("a", encoding="utf-8")
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "tunesmith", "run", str(run_folder / CONFIG_NAME)],
                    cwd=run_folder,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # Ctrl-C's default action, even when the app was started with SIGINT ignored (as a
                    # background job is): the pipeline then stops cleanly in every stage
                    preexec_fn=_default_sigint,
                )
            finally:
                log.close()  # the child holds its own handle
            self.folder = run_folder

    def settle(self) -> None:
        """After Stop, wait (up to a minute) for the stopped run to write its checkpoint and end, so
        Resume right after Stop continues it instead of finding it still running."""
        if self.stopping:
            self.wait(_STOP_WAIT_S)

    def stop(self) -> bool:
        """Send SIGINT, exactly what Ctrl-C sends; False when no run is going."""
        with self._lock:
            if not self.running:
                return False
            self.process.send_signal(signal.SIGINT)
            self.stopping = True
            return True

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the child to end (at most ``timeout`` seconds); its exit status (None: still going)."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
