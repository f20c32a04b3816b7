"""The one exception users see: a one-paragraph message that says what is wrong, where, and what to do."""

from __future__ import annotations

__all__ = ["TunesmithError", "closest_name"]


class TunesmithError(Exception):
    """A user-facing error. The CLI prints its message alone (no traceback) and exits with code 2.

    The message is one paragraph: what is wrong, where (file, row, field, value), and what to do.
    """


def closest_name(name: str, candidates) -> str | None:
    """The candidate most like ``name`` (for "did you mean ...?" hints), or None if none is close."""
    import difflib

    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None
