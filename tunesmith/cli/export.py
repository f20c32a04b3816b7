"""``tunesmith export MODEL --format merged|lora|gguf --out DIR``: save a trained model for other tools
(argument parsing only)."""

from __future__ import annotations

import argparse

from tunesmith.cli._args import positive_int

__all__ = ["add_parser", "run"]

FORMATS = ("merged", "lora", "gguf")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith export``."""
    from tunesmith.export.gguf_constants import DEFAULT_QUANT, QUANT_METHODS

    parser = subparsers.add_parser(
        "export",
        help="export a model: merged 16-bit folder, LoRA adapter, or GGUF + Ollama Modelfile",
        description=(
            "Export MODEL (a LoRA adapter folder from training, a model folder, alias or hub id). "
            "merged: transformers folder with LoRA merged in; lora: the adapter alone (PEFT format); "
            "gguf: OUT/<name>.<QUANT>.gguf plus an Ollama Modelfile that uses the training prompt format."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="adapter folder, model folder, alias or hub id")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--quant",
        default=DEFAULT_QUANT,
        metavar="METHOD",
        help=f"GGUF quantization: {', '.join(QUANT_METHODS)} (default q8_0)",
    )
    parser.add_argument(
        "--name", default=None, help="GGUF file name stem (default: the output folder's name)"
    )
    parser.add_argument(
        "--prompt-template",
        default=None,
        metavar="TEXT",
        help="prompt format for the Modelfile "
        "when the tokenizer has no chat template ('...{instruction}...{output}')",
    )
    parser.add_argument("--no-modelfile", action="store_true", help="write the GGUF file without a Modelfile")
    parser.add_argument(
        "--num-ctx",
        type=positive_int,
        default=None,
        metavar="N",
        help="Modelfile num_ctx (default: min(context, 4096))",
    )
    parser.add_argument("--verify", action="store_true", help="after a GGUF export, verify it in llama.cpp")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a folder that is not empty (merged/lora replace the whole folder)",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load MODEL, export it, print where it went; 1 when --verify fails."""
    from tunesmith.export._output import check_output_dir
    from tunesmith.export.gguf_constants import quant_method
    from tunesmith.export.merge import save_pretrained_merged
    from tunesmith.export.source import load_for_export

    # Mistakes in the request fail before the model loads.
    if args.format == "gguf":
        quant_method(args.quant)
    check_output_dir(args.out, args.overwrite)
    model, tokenizer = load_for_export(args.model)
    if args.format != "gguf":
        method = "lora" if args.format == "lora" else "merged_16bit"
        print(save_pretrained_merged(model, args.out, tokenizer, method, overwrite=args.overwrite))
        return 0
    from tunesmith.export.gguf import save_pretrained_gguf

    path = save_pretrained_gguf(
        model,
        args.out,
        tokenizer,
        args.quant,
        name=args.name,
        prompt_template=args.prompt_template,
        modelfile=False if args.no_modelfile else (True if args.prompt_template else None),
        num_ctx=args.num_ctx,
        overwrite=args.overwrite,
    )
    print(path)
    if not args.verify:
        return 0
    from tunesmith.export.verify import verify_gguf

    report = verify_gguf(path, (model, tokenizer))
    print(report.summary())
    return 0 if report.passed else 1
