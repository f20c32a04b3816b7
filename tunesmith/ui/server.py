"""Start the web app: private by default (127.0.0.1, no analytics), uploads size-limited and kept in the
app's own folder, and nothing served from outside it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tunesmith.errors import TunesmithError

__all__ = [
    "launch",
    "serve",
    "prepare_environment",
    "LOCAL_HOSTS",
    "DEFAULT_PORT",
    "DEFAULT_FOLDER",
    "DEFAULT_MAX_UPLOAD_MB",
    "host_warning",
]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 7860
DEFAULT_FOLDER = "runs/ui"
DEFAULT_MAX_UPLOAD_MB = 50.0


def host_warning(host: str) -> str | None:
    """The warning for a host other than this machine's loopback (None for a local one)."""
    if host in LOCAL_HOSTS:
        return None
    return (
        f"warning: tunesmith ui listens on {host}, not only on this machine (127.0.0.1): anyone who can "
        "reach this address can use the app, upload files and start training. There is no login. Use --host "
        "127.0.0.1 unless you mean it."
    )


def _require_gradio() -> None:
    """Refuse with the install command when Gradio is missing (found without importing it: the
    environment must be set before its import)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise TunesmithError(
            "The web app needs Gradio, which is an optional part of tunesmith. Install it with: "
            'pip install "tunesmith[ui]" (in a clone: pip install -e ".[ui]").'
        )


def prepare_environment(folder: str | os.PathLike) -> Path:
    """Set what Gradio reads when it is imported: no analytics, uploads into ``folder/.uploads``. The
    app's folder, resolved."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    root = Path(folder).expanduser().resolve()
    cache = root / ".uploads"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    return root


def serve(
    state, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, block: bool = True, quiet: bool = False
):
    """Serve the app over ``state`` (a ``UiState``) at ``http://host:port``; ``block=False`` returns the
    running ``gr.Blocks`` at once (close it with ``.close()``)."""
    _require_gradio()
    from tunesmith.ui.app import CSS, build_app

    warning = host_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    demo = build_app(state)
    demo.queue(default_concurrency_limit=4)
    try:
        _launch(demo, state, host, port, block, quiet, CSS)
    except OSError as err:  # Gradio's "Cannot find empty port", or the address is not this machine's
        raise TunesmithError(
            f"The web app cannot listen on {host}:{port} ({' '.join(str(err).split())}). Another program may "
            "be using that port: choose another one with --port, or stop the other program."
        ) from None
    return demo


def _launch(demo, state, host: str, port: int, block: bool, quiet: bool, css: str) -> None:
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=int(state.workspace.max_upload_mb * 1024 * 1024),
        prevent_thread_lock=not block,
        quiet=quiet,
        css=css,
        footer_links=[],
        show_error=False,
        mcp_server=False,
        pwa=False,
        ssr_mode=False,
    )


def launch(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    folder: str | os.PathLike = DEFAULT_FOLDER,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    block: bool = True,
):
    """``tunesmith ui``: the app over the runs in ``folder``, at ``http://host:port``."""
    _require_gradio()
    root = prepare_environment(folder)  # before Gradio is imported
    from tunesmith.ui.app import UiState
    from tunesmith.ui.session import Workspace

    workspace = Workspace(root, max_upload_mb)
    workspace.remove_drafts()  # uploads of pages closed before a run was started
    return serve(UiState(workspace), host, port, block=block)
