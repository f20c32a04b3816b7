"""The ``tunesmith`` command: parses arguments, dispatches to one module per subcommand, turns errors
into one clear paragraph and exit code 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each name is a module tunesmith.cli.<name> with `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ["check", "chat", "run", "export", "verify"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    from tunesmith._version import __version__

    parser = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune, export and verify LLMs.")
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tunesmith.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A bare `tunesmith` is `tunesmith run`: the built-in example config.
        args = parser.parse_args([*argv, "run"])
    from tunesmith.errors import TunesmithError

    try:
        return int(args.func(args) or 0)
    except TunesmithError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
