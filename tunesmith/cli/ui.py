"""``tunesmith ui [--host 127.0.0.1] [--port 7860]``: the local web app (argument parsing only)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith ui``."""
    from tunesmith.ui.server import DEFAULT_FOLDER, DEFAULT_MAX_UPLOAD_MB, DEFAULT_PORT

    parser = subparsers.add_parser(
        "ui",
        help="a local web app: data, prompt, training with a live loss curve, before/after, export",
        description=(
            "Start a web app in the browser for the whole flow of `tunesmith run`: choose the model, upload "
            "data and see it exactly as the model will, pick a prompt format, train with a live loss curve "
            "(stop and resume), compare answers before and after, chat with the result and download the "
            "verified GGUF with its Ollama Modelfile. Needs the ui extra: pip install -e '.[ui]'."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: this machine only)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--folder", default=DEFAULT_FOLDER, help=f"where runs and uploads are kept (default {DEFAULT_FOLDER})"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=_positive,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest data file accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Serve the app until Ctrl-C."""
    from tunesmith.ui.server import launch

    launch(args.host, args.port, args.folder, args.max_upload_mb)
    return 0
