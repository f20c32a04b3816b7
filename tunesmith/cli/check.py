"""``tunesmith check`` (also ``python -m tunesmith``): can this install train? (argument parsing only)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith check``."""
    parser = subparsers.add_parser(
        "check",
        help="check the environment: versions, device, bf16, 4-bit, llama.cpp verification",
        description=(
            "Print the tunesmith, torch and transformers versions, the device, bf16 and 4-bit support, "
            "whether llama.cpp verification is available and the supported model families. Exits 0 when this "
            "install can train, 1 (with the fix to apply) when it cannot."
        ),
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the environment report; 0 when training works here, 1 otherwise."""
    from tunesmith.recipe.environment import can_train, check_environment

    rows = check_environment()
    width = max(len(r.name) for r in rows) + 1
    for row in rows:
        mark = "" if row.ok else ("  [FAIL]" if row.required else "  [warn]")
        value = row.value.replace("\n", "\n" + " " * (width + 1))  # a row of several lines stays aligned
        print(f"{row.name + ':':<{width}} {value}{mark}")
    failed = [r for r in rows if not r.ok]
    for row in failed:
        print(f"  fix ({row.name}): {row.fix}")
    if can_train(rows):
        print(
            "ready: this install can train."
            + (" (optional parts missing: see fixes above)" if failed else "")
        )
        return 0
    print(
        "not ready: this install cannot train; apply the fixes above and run `tunesmith check` again.",
        file=sys.stderr,
    )
    return 1
