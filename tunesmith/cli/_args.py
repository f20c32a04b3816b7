"""Argument types the subcommands share: argparse refuses a bad value before any model loads."""

from __future__ import annotations

import argparse
import re

__all__ = ["positive_int", "device_name", "non_blank"]


def positive_int(text: str) -> int:
    """An integer of at least 1 (lengths, context sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def device_name(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text.strip().lower()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device; use cpu, cuda, cuda:N (e.g. cuda:0) or auto"
        )
    return text.strip().lower()


def non_blank(text: str) -> str:
    """Text with something in it besides spaces."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give the question to ask, e.g. -p 'What is fatigue?'")
    return text
