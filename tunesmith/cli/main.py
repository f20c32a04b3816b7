"""The ``tunesmith`` command: parses arguments, dispatches to one module per subcommand, turns errors
into one clear paragraph and exit code 2 (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tunesmith._distributed import is_main_process
from tunesmith.constants import EXIT_INTERRUPTED

# Each name is a module tunesmith.cli.<name> with `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ["check", "chat", "run", "export", "verify", "ui"]


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
    code = _dispatch(argv)
    if code == EXIT_INTERRUPTED and not is_main_process():
        # a rank other than 0 ends cleanly when stopped: torch's agent stops every rank as soon as one exits
        # non-zero, and rank 0, which speaks for the run, may still be writing the state and the report
        return 0
    return code


def _dispatch(argv: list[str] | None) -> int:
    """Parse ``argv``, run its command, and turn errors and Ctrl-C into exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # A bare `tunesmith` is `tunesmith run`: the built-in example config.
        args = parser.parse_args([*argv, "run"])
    from tunesmith._offline_bitsandbytes import import_bitsandbytes_offline
    from tunesmith.errors import TunesmithError, out_of_space

    import_bitsandbytes_offline()  # before a command imports peft, which imports it
    try:
        return int(args.func(args) or 0)
    except TunesmithError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a full disk can stop any write; other errors are bugs to see in full
        full = out_of_space(err, getattr(err, "filename", None) or "a file")
        if full is None or debug:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        if is_main_process():  # rank 0 reports the stop
            print("interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


def console_main(argv: list[str] | None = None) -> None:
    """The console script: :func:`main`, and after Ctrl-C an exit without the interpreter's shutdown.

    Ctrl-C promises to stop at once, and by the time :func:`main` returns, the state file, the loss curve
    and the report are written. The interpreter's own shutdown would then still spend 3-5 s (measured on
    2 cores, more on a loaded machine) collecting the loaded model's objects, so it is skipped.
    """
    code = main(argv)
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    console_main()
