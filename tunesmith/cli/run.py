"""``tunesmith run [CONFIG]``: the whole fine-tuning flow from one config file (argument parsing only)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith run``."""
    parser = subparsers.add_parser(
        "run",
        help="fine-tune, compare, export and verify from one config file (default: the built-in example)",
        description=(
            "Run the whole flow from one YAML/TOML config: check the environment, load the model, ask the "
            "probe questions, load the data, fine-tune with LoRA, ask again, export GGUF + Modelfile, verify "
            "it in llama.cpp and write report.md/report.html. Without CONFIG it runs the built-in default "
            "(examples/medical-en.yaml: SmolLM2-135M-Instruct on English medical questions, a few minutes on "
            "a CPU). Re-running an interrupted run resumes it."
        ),
    )
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="YAML or TOML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set training.max_steps=10 (repeatable)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the fully resolved config and exit"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the config and the data (no model is loaded) and exit"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in the output folder"
    )
    parser.add_argument(
        "--gpus",
        type=int,
        metavar="N",
        help="train on N GPUs of this machine, one process each (DDP; torchrun is started for you)",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="with --gpus: 'cpu' runs the N processes on the CPU (gloo), as the tests do",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the config, then print it, check it, or run it."""
    from tunesmith.constants import EXIT_INTERRUPTED
    from tunesmith.errors import TunesmithError
    from tunesmith.recipe.config import dump_config, load_config
    from tunesmith.recipe.launch import write_rank_error

    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("output.overwrite=true")
    config = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(dump_config(config))
        return 0
    from tunesmith.recipe import pipeline

    if args.dry_run:
        pipeline.dry_run(config)
        return 0
    if args.gpus is not None:
        return _launch(args, config)
    if args.device != "cuda":
        raise TunesmithError(
            f"--device {args.device} chooses where the --gpus N processes run; add --gpus N."
        )
    try:
        result = pipeline.run(config)
    except TunesmithError as err:
        if write_rank_error(err):  # a rank of `--gpus N`: the launcher reports it, once
            return 2
        raise
    return 0 if result.finished else EXIT_INTERRUPTED


def _launch(args: argparse.Namespace, config) -> int:
    """Start one process per GPU running this same command (without --gpus/--device)."""
    from pathlib import Path

    from tunesmith.recipe.launch import check_gpus, launch
    from tunesmith.training.arguments import accumulation_for

    check_gpus(args.gpus, args.device)
    t = config.training
    if t.global_batch_size is not None:
        accumulation_for(t.global_batch_size, t.per_device_train_batch_size, args.gpus)
    rank_arguments = [*([args.config] if args.config else []), *(f"--set={o}" for o in args.overrides)]
    if args.overwrite:
        rank_arguments.append("--overwrite")
    return launch(rank_arguments, args.gpus, args.device, Path(config.output.folder))
