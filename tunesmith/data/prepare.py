"""From a file (or ``datasets`` object) to tokenized train/eval sets with statistics, validating everything
first.

``prepare_dataset`` reads top to bottom: load -> recognise layout -> choose template -> validate rows ->
duplicates -> format -> tokenize (label answers, truncate with a count) -> split off held-out rows.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

from tunesmith.constants import IGNORE_INDEX
from tunesmith.data.chat_templates import OWN_TEMPLATE_NAMES, get_chat_template, template_family
from tunesmith.data.formatting import render_row
from tunesmith.data.layouts import Layout, detect_layout
from tunesmith.data.loading import load_dataset_file
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.stats import DataStats
from tunesmith.data.tokenizing import TokenizedRows, tokenize_rows
from tunesmith.data.validation import (
    DUPLICATE_POLICIES,
    check_template_fields,
    find_duplicates,
    validate_rows,
)
from tunesmith.errors import TunesmithError

__all__ = [
    "PreparedData",
    "prepare_dataset",
    "drop_duplicates",
    "held_out_size",
    "choose_template",
    "split_held_out",
    "source_name",
    "DEFAULT_PROMPT",
]

logger = logging.getLogger(__name__)

# Used for instruction data when the tokenizer has no chat template (a base model).
DEFAULT_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"
)


@dataclass
class PreparedData:
    """Tokenized ``train`` (and optional ``eval``) ``datasets.Dataset``: columns text, input_ids, labels."""

    train: object
    eval: object | None
    stats: DataStats


def source_name(source) -> str:
    """How errors name a data source: its path, or the kind of object it is."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"the {type(source).__name__}"


def choose_template(template, tokenizer, layout_name: str):
    """(PromptTemplate or None, label for the statistics); sets the tokenizer's chat template to match."""
    if layout_name in ("text", "prompt_completion"):
        return None, "none"
    if isinstance(template, str) and "{" in template:
        template = PromptTemplate(template)
    if isinstance(template, PromptTemplate):
        if layout_name != "alpaca":
            raise TunesmithError(
                "A PromptTemplate formats instruction/output rows; this data is a conversation "
                f"({layout_name}). Use a chat template name instead (e.g. template='chatml')."
            )
        tokenizer.chat_template = template.to_chat_template()  # inference and export read the same format
        return template, "prompt template"
    if isinstance(template, str) and template.lower() not in OWN_TEMPLATE_NAMES:
        get_chat_template(tokenizer, template)
        return None, template_family(tokenizer) or template
    if template is not None and not isinstance(template, str):
        raise TunesmithError(
            f"template must be a PromptTemplate, a chat template name or None, not {type(template).__name__}."
        )
    if getattr(tokenizer, "chat_template", None):
        own = PromptTemplate.from_chat_template(tokenizer.chat_template)
        if own is not None and layout_name == "alpaca":
            return own, "prompt template"
        return None, template_family(tokenizer) or "tokenizer's own"
    if layout_name != "alpaca":
        raise TunesmithError(
            "The data is a conversation but the tokenizer has no chat template. Pass template='chatml' "
            "(or 'llama-3', 'qwen-2.5', 'mistral', 'alpaca')."
        )
    template = PromptTemplate(DEFAULT_PROMPT)
    tokenizer.chat_template = template.to_chat_template()
    return template, "prompt template"


def drop_duplicates(rows, mapping, policy: str, source: str) -> tuple[list, list[int], int]:
    """(rows to use, their 1-based row numbers, number of duplicates found) under ``policy``."""
    if policy not in DUPLICATE_POLICIES:
        raise TunesmithError(
            f"duplicates={policy!r} is not understood; use one of {', '.join(DUPLICATE_POLICIES)}."
        )
    repeats = find_duplicates(rows, mapping)
    if repeats and policy == "error":
        raise TunesmithError(
            f"{source} has {len(repeats)} exact duplicate rows (first: row {repeats[0] + 1}). Remove them, "
            "or set duplicates='drop' (or 'keep')."
        )
    if repeats:
        logger.warning(
            "%s: %d exact duplicate rows (%s).",
            source,
            len(repeats),
            "dropped" if policy == "drop" else "kept",
        )
    skip = set(repeats) if policy == "drop" else set()
    kept = [(i + 1, row) for i, row in enumerate(rows) if i not in skip]
    return [r for _, r in kept], [n for n, _ in kept], len(repeats)


@dataclass(frozen=True)
class _Formatting:
    """How rows become tokens; the same for the training rows and the held-out rows."""

    layout: Layout
    mapping: dict[str, str]
    tokenizer: object
    template: PromptTemplate | None
    max_seq_length: int
    on_too_long: str
    responses_only: bool
    source: str


def _tokenized(rows: list, numbers: list[int], how: _Formatting) -> tuple[list[str], TokenizedRows]:
    """(formatted texts of the kept rows, their tokens and labels) for ``rows`` (1-based ``numbers``)."""
    layout, source = how.layout, how.source
    rendered = [
        render_row(row, layout, how.mapping, how.tokenizer, how.template, f"{source}, row {n}")
        for row, n in zip(rows, numbers, strict=True)
    ]
    labelled = how.responses_only and layout.name != "text"
    tok = tokenize_rows(
        rendered,
        how.tokenizer,
        how.max_seq_length,
        on_too_long=how.on_too_long,
        responses_only=labelled,
        source=source,
        row_numbers=numbers,
    )
    if not tok.input_ids or all(all(x == IGNORE_INDEX for x in labels[1:]) for labels in tok.labels):
        raise TunesmithError(
            f"{source}: after formatting every label is masked, so training would learn nothing. Cause: "
            + (
                "every answer lies beyond max_seq_length; raise max_seq_length."
                if tok.truncated
                else "no answer text was found in the formatted rows; check the template and the answer "
                "field."
            )
        )
    texts = [rendered[i].text for i in tok.kept]
    return texts, tok


def held_out_size(n_rows: int, fraction: float, source: str, n_duplicates: int = 0) -> int:
    """How many of ``n_rows`` (duplicates already dropped) ``fraction`` holds out; an error when that
    leaves no training row."""
    n_eval = max(1, round(n_rows * fraction))
    if n_eval >= n_rows:
        dropped = f" after dropping {n_duplicates} exact duplicates" if n_duplicates else ""
        raise TunesmithError(
            f"{source} has {n_rows} row{'s' if n_rows != 1 else ''}{dropped}: too few to hold out "
            f"{fraction:.0%} for evaluation and keep rows to train on. Add rows, or hold none out (config: "
            "data.eval_split: 0, or --set data.eval_split=0; Python: eval_split=None), or give a separate "
            "eval file."
        )
    return n_eval


def split_held_out(rows, numbers, fraction, seed: int, name: str):
    """(held-out (rows, numbers) or None, training rows, training row numbers) for a fraction in (0, 1)."""
    if fraction is None:
        return None, rows, numbers
    if not isinstance(fraction, float) or not 0 < fraction < 1:
        raise TunesmithError(f"eval_split={fraction!r}: give a fraction between 0 and 1, or a file.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = held_out_size(len(rows), fraction, name)
    held, kept = sorted(order[:n_eval]), sorted(order[n_eval:])
    held_out = ([rows[i] for i in held], [numbers[i] for i in held])
    return held_out, [rows[i] for i in kept], [numbers[i] for i in kept]


def _stats(
    how: _Formatting,
    tok: TokenizedRows,
    *,
    template: str,
    rows: int,
    eval_set,
    policy: str,
    n_duplicates: int,
) -> DataStats:
    """The data statistics of one preparation (warning once about truncated rows)."""
    name, max_seq_length = how.source, how.max_seq_length
    if tok.truncated:
        logger.warning(
            "%s: %d rows were longer than max_seq_length=%d and were truncated.",
            name,
            tok.truncated,
            max_seq_length,
        )
    return DataStats(
        source=name,
        layout=how.layout.name,
        template=template,
        rows=rows,
        eval_rows=len(eval_set) if eval_set is not None else 0,
        tokens=sum(map(len, tok.input_ids)),
        answer_tokens=sum(sum(1 for x in labels[1:] if x != IGNORE_INDEX) for labels in tok.labels),
        max_tokens=tok.max_tokens,
        truncated=tok.truncated,
        dropped_no_answer=tok.dropped_no_answer,
        duplicates=n_duplicates,
        duplicates_dropped=policy == "drop" and n_duplicates > 0,
        max_seq_length=max_seq_length,
    )


def prepare_dataset(
    source,
    tokenizer,
    *,
    template=None,
    fields: dict[str, str] | None = None,
    max_seq_length: int = 2048,
    on_too_long: str = "truncate",
    duplicates: str = "drop",
    eval_split=None,
    responses_only: bool = True,
    encoding: str | None = None,
    limit: int | None = None,
    seed: int = 3407,
    split: str = "train",
    layout: str | None = None,
) -> PreparedData:
    """Load, validate, format and tokenize training data; see the module docstring for the steps.

    ``template``: a :class:`PromptTemplate` (or its text), a chat family name ("chatml", "llama-3", ...),
    "own", or None (the tokenizer's chat template, else an Alpaca-style prompt template). The tokenizer's
    chat template is set to match, so inference and export use the same format. ``eval_split``: a fraction
    of the rows (e.g. 0.1), a file or a ``datasets`` object held out for evaluation. ``limit``: use only the
    first N rows. ``responses_only``: loss on answer tokens only. ``layout`` forces a layout
    ("alpaca", "sharegpt", "messages", "prompt_completion", "text") instead of recognising it.
    """
    import datasets

    name = source_name(source)
    data = load_dataset_file(source, encoding=encoding, split=split)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    layout, mapping = detect_layout(data.column_names, fields, name, layout)
    prompt_template, template_label = choose_template(template, tokenizer, layout.name)
    if prompt_template is not None:
        check_template_fields(prompt_template, mapping, data.column_names, name)
    rows = data.to_list()
    validate_rows(rows, layout, mapping, name)
    rows, numbers, n_duplicates = drop_duplicates(rows, mapping, duplicates, name)

    if isinstance(eval_split, (str, os.PathLike, list)) or hasattr(eval_split, "column_names"):
        held_out = prepare_dataset(
            eval_split,
            tokenizer,
            template=prompt_template or template,
            fields=fields,
            max_seq_length=max_seq_length,
            on_too_long=on_too_long,
            duplicates=duplicates,
            responses_only=responses_only,
            encoding=encoding,
            seed=seed,
        ).train
    else:
        held_out, rows, numbers = split_held_out(rows, numbers, eval_split, seed, name)

    how = _Formatting(
        layout=layout,
        mapping=mapping,
        tokenizer=tokenizer,
        template=prompt_template,
        max_seq_length=max_seq_length,
        on_too_long=on_too_long,
        responses_only=responses_only,
        source=name,
    )
    texts, tok = _tokenized(rows, numbers, how)
    train = datasets.Dataset.from_dict({"text": texts, "input_ids": tok.input_ids, "labels": tok.labels})
    eval_set = held_out
    if isinstance(held_out, tuple):
        eval_texts, eval_tok = _tokenized(*held_out, how)
        eval_set = datasets.Dataset.from_dict(
            {"text": eval_texts, "input_ids": eval_tok.input_ids, "labels": eval_tok.labels}
        )
    stats = _stats(
        how,
        tok,
        template=template_label,
        rows=len(train),
        eval_set=eval_set,
        policy=duplicates,
        n_duplicates=n_duplicates,
    )
    return PreparedData(train, eval_set, stats)
