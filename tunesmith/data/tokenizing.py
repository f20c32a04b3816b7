"""Tokenize formatted rows into ``input_ids`` and ``labels`` (-100 outside the answer); never cut silently."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.constants import IGNORE_INDEX
from tunesmith.data.formatting import Rendered
from tunesmith.data.masking import answer_labels
from tunesmith.errors import TunesmithError

__all__ = ["TokenizedRows", "tokenize_rows", "TOO_LONG_POLICIES"]

TOO_LONG_POLICIES = ("truncate", "error")


@dataclass
class TokenizedRows:
    """Token ids and labels per row, plus what happened on the way."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # indices (into the rendered list) of the rows kept
    max_tokens: int = 0
    truncated: int = 0
    dropped_no_answer: int = 0


def tokenize_rows(
    rendered: list[Rendered],
    tokenizer,
    max_seq_length: int,
    *,
    on_too_long: str = "truncate",
    responses_only: bool = True,
    source: str = "the data",
    row_numbers: list[int] | None = None,
) -> TokenizedRows:
    """Tokenize each row; label only answer tokens when ``responses_only``.

    Rows longer than ``max_seq_length`` are truncated and counted (``on_too_long="truncate"``) or refused
    with the row number (``"error"``). A row whose answer lies wholly beyond the limit is dropped and counted.
    """
    if on_too_long not in TOO_LONG_POLICIES:
        raise TunesmithError(
            f"on_too_long={on_too_long!r} is not understood; use one of {', '.join(TOO_LONG_POLICIES)}."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TunesmithError(
            f"The tokenizer ({type(tokenizer).__name__}) is a slow tokenizer without offsets; tunesmith "
            "needs a fast one to find answer tokens. Load it with AutoTokenizer.from_pretrained(..., "
            "use_fast=True)."
        )
    row_numbers = row_numbers or list(range(1, len(rendered) + 1))
    texts = [r.text for r in rendered]
    bos = tokenizer.bos_token
    # A template that already writes the BOS text must not get a second BOS from the tokenizer.
    add_special = not (bos and texts and texts[0].startswith(bos))
    encoded = tokenizer(texts, add_special_tokens=add_special, return_offsets_mapping=True)
    out = TokenizedRows()
    for index, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)):
        labels = answer_labels(ids, offsets, rendered[index].spans) if responses_only else list(ids)
        out.max_tokens = max(out.max_tokens, len(ids))
        if len(ids) > max_seq_length:
            if on_too_long == "error":
                raise TunesmithError(
                    f"{source}, row {row_numbers[index]} is {len(ids)} tokens long, more than max_seq_length="
                    f"{max_seq_length}. Raise max_seq_length, shorten the row, or set on_too_long='truncate' "
                    "to cut such rows (they are counted in the data statistics)."
                )
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            out.truncated += 1
            if all(label == IGNORE_INDEX for label in labels[1:]):
                out.dropped_no_answer += 1
                continue
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.kept.append(index)
    return out
