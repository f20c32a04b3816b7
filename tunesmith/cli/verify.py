"""``tunesmith verify FILE.gguf --against MODEL``: compare a GGUF file in llama.cpp with the PyTorch model
(argument parsing only)."""

from __future__ import annotations

import argparse
import json

from tunesmith.cli._args import positive_int

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith verify``."""
    parser = subparsers.add_parser(
        "verify",
        help="check a GGUF file against its PyTorch model in llama.cpp (tokens, top-1, greedy text)",
        description=(
            "Load FILE.gguf in llama.cpp and the model it was exported from in PyTorch, run prompts through "
            "both and report: tokenization identical, top-1 next-token agreement over the prompt positions, "
            "greedy 32-token continuations. Exits 0 when tokenization is identical and top-1 agreement "
            "reaches 99% (f16/bf16/q8_0) or 90% (4- to 6-bit), 1 when a threshold fails, 2 on bad input."
        ),
    )
    parser.add_argument("gguf", metavar="FILE.gguf", help="the GGUF file to check")
    parser.add_argument(
        "--against",
        required=True,
        metavar="MODEL",
        help="model folder (merged or LoRA adapter), alias or hub id",
    )
    parser.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        metavar="TEXT",
        help="a prompt to compare on (repeatable)",
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=32, metavar="N", help="greedy continuation length"
    )
    parser.add_argument(
        "--tie-margin",
        type=float,
        default=None,
        metavar="SD",
        help=(
            "count a different top-1 token as agreeing when PyTorch rates it within this many standard "
            "deviations of its logits of its own top token (default: verify_gguf's margin; 0 = strict)"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Verify and print the report; 0 when every threshold holds, 1 otherwise."""
    from tunesmith.export.verify import verify_gguf

    report = verify_gguf(
        args.gguf,
        args.against,
        args.prompts,
        max_new_tokens=args.max_new_tokens,
        **({} if args.tie_margin is None else {"tie_margin": args.tie_margin}),
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.passed else 1
