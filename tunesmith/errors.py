"""The one exception users see: a one-paragraph message that says what is wrong, where, and what to do."""

from __future__ import annotations

import errno
import re

__all__ = ["TunesmithError", "closest_name", "out_of_space"]

# "No space left on device", "Disk quota exceeded", "File too large" (a file-size limit, ulimit -f): a
# write that fails part-way for lack of room, wherever tunesmith writes.
OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class TunesmithError(Exception):
    """A user-facing error. The CLI prints its message alone (no traceback) and exits with code 2.

    The message is one paragraph: what is wrong, where (file, row, field, value), and what to do.
    """


def closest_name(name: str, candidates) -> str | None:
    """The candidate most like ``name`` (for "did you mean ...?" hints), or None if none is close."""
    import difflib

    matches = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return matches[0] if matches else None


def out_of_space(err: BaseException, target: object) -> TunesmithError | None:
    """The clear error for a write into ``target`` that failed for lack of room, or None for other errors.

    Files are written under a temporary name and renamed when complete, so the message can promise that
    nothing half-written is left as the real file.
    """
    code = _errno_of(err)
    if code not in OUT_OF_SPACE_ERRNOS:
        return None
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota of this user is used up",
        errno.EFBIG: "the file grew past the file-size limit of this shell (ulimit -f)",
    }[code]
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return TunesmithError(
        f"Writing {target} stopped part-way: {reason}{where}. Nothing half-written is kept under the real "
        "file name. Free some space (df -h shows how much is left), choose an output folder on another "
        "disk, or raise the limit, then run the same command again."
    )


def _errno_of(err: BaseException) -> int | None:
    """The OS error number of ``err``: an OSError's, or the one a Rust library (safetensors, tokenizers)
    writes into its message as "(os error N)"."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None
