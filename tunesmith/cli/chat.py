"""``tunesmith chat [MODEL] [--prompt TEXT]``: talk to any model the loader accepts (parsing only)."""

from __future__ import annotations

import argparse
import sys

from tunesmith.cli._args import device_name, non_blank, positive_int

__all__ = ["add_parser", "run"]

_QUIT = {"/exit", "/quit", "exit", "quit"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``tunesmith chat``."""
    from tunesmith.models.registry import DEFAULT_MODEL

    parser = subparsers.add_parser(
        "chat",
        help="chat with a model (built-in alias, .gguf file, model folder or hub id), streaming",
        description=(
            "Chat with a model in its own chat template, streaming the answer. With --prompt, answer once "
            "and exit; without it, read questions until an empty line, /exit or Ctrl-D."
        ),
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=DEFAULT_MODEL,
        metavar="MODEL",
        help=f"model to load (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--prompt", "-p", type=non_blank, help="ask this once and exit")
    parser.add_argument("--system", help="system message (when the chat template uses one)")
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=256, metavar="N", help="answer length limit"
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples"
    )
    parser.add_argument(
        "--4bit", dest="load_in_4bit", action="store_true", help="load the weights in 4-bit (NF4)"
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: GPU if present)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model, then answer one prompt or run the interactive loop."""
    from tunesmith.api.fast_language_model import FastLanguageModel
    from tunesmith.generation.chat import chat

    model, tokenizer = FastLanguageModel.from_pretrained(
        args.model, load_in_4bit=args.load_in_4bit, device_map=args.device
    )
    FastLanguageModel.for_inference(model)
    options = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "system": args.system}
    if args.prompt is not None:
        chat(model, tokenizer, args.prompt, **options)
        return 0
    return _loop(model, tokenizer, chat, options)


def _loop(model, tokenizer, chat, options: dict) -> int:
    """Read a question, stream the answer, keep the conversation; stop on empty input, /exit or EOF."""
    print(f"Chatting with {model.name_or_path}. Empty line, /exit or Ctrl-D ends.", file=sys.stderr)
    messages: list[dict] = []
    while True:
        try:
            question = input(">>> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not question or question.lower() in _QUIT:
            return 0
        messages.append({"role": "user", "content": question})
        messages = _fit(
            messages, tokenizer, getattr(model, "max_seq_length", 2048) - options["max_new_tokens"]
        )
        answer = chat(model, tokenizer, messages, **options)
        messages.append({"role": "assistant", "content": answer})


def _fit(messages: list[dict], tokenizer, budget: int) -> list[dict]:
    """Drop the oldest question/answer pairs until the conversation fits ``budget`` tokens."""
    from tunesmith.generation.chat import prompt_ids

    while len(messages) > 1 and prompt_ids(tokenizer, messages).shape[1] > budget:
        messages = messages[2:]
    return messages
