"""Loss on answer tokens only: Unsloth's ``train_on_responses_only`` for trainers and text data sets.

Answers are found in the text by the template's turn markers (``instruction_part`` / ``response_part``):
everything after a response marker up to the next instruction marker is an answer. Labels come from
character offsets, so a marker that tokenizes differently in context is still found exactly.
"""

from __future__ import annotations

import logging

from tunesmith.constants import IGNORE_INDEX
from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.data.chat_templates import template_family, turn_markers_family
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError

__all__ = ["train_on_responses_only", "response_markers", "answer_spans", "answer_labels", "mask_dataset"]

logger = logging.getLogger(__name__)


def response_markers(tokenizer) -> tuple[str | None, str]:
    """(instruction_part, response_part) for the tokenizer's chat template, or a clear error."""
    template = getattr(tokenizer, "chat_template", None)
    prompt = PromptTemplate.from_chat_template(template)
    if prompt is not None:
        head, tail = prompt.text.split("{instruction}", 1)
        cut = min(i for i in (tail.find("{reasoning}"), tail.find("{output}")) if i >= 0)
        between = tail[:cut].replace("{input}", "")
        return (head.replace("{{", "{").replace("}}", "}") or None), between.replace("{{", "{").replace(
            "}}", "}"
        )
    family = (template_family(template) or turn_markers_family(template)) if template else None
    if family is None:
        raise TunesmithError(
            "train_on_responses_only cannot tell where answers start in this tokenizer's chat template. Pass "
            "the markers, e.g. instruction_part='<|im_start|>user\\n', "
            "response_part='<|im_start|>assistant\\n'."
        )
    row = CHAT_FAMILIES[family]
    return row.instruction_part, row.response_part


def answer_spans(text: str, instruction_part: str | None, response_part: str) -> list[tuple[int, int]]:
    """Character spans of the answers in ``text``: from each response marker to the next instruction one."""
    spans, position = [], 0
    while True:
        found = text.find(response_part, position)
        if found < 0:
            return spans
        start = found + len(response_part)
        end = text.find(instruction_part, start) if instruction_part else -1
        end = len(text) if end < 0 else end
        spans.append((start, end))
        position = end


def answer_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token id where its character ``offsets`` overlap an answer span, else ``IGNORE_INDEX``."""
    # A token that straddles the prompt/answer boundary (" Fine" after "A:") is learned as answer.
    return [
        token if end > start and any(start < b and end > a for a, b in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, offsets, strict=True)
    ]


def _labels_for(text: str, ids: list[int], tokenizer, instruction_part, response_part) -> list[int] | None:
    """Labels for ``ids`` (the tokens of ``text``, maybe truncated); None if the tokens do not match it."""
    bos = tokenizer.bos_token
    encoded = tokenizer(
        text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True
    )
    full = encoded["input_ids"]
    if full[: len(ids)] != list(ids):
        return None
    spans = answer_spans(text, instruction_part, response_part)
    return answer_labels(ids, encoded["offset_mapping"][: len(ids)], spans)


def mask_dataset(
    dataset,
    tokenizer,
    instruction_part=None,
    response_part=None,
    text_field: str = "text",
    name: str = "train",
):
    """A copy of ``dataset`` whose ``labels`` keep only answer tokens (tokenizing ``text_field`` first)."""
    if response_part is None:
        instruction_part, response_part = response_markers(tokenizer)
    if text_field not in dataset.column_names:
        raise TunesmithError(
            f"train_on_responses_only needs the text of each row, but the {name} data set has no "
            f"'{text_field}' column (packing=True drops it). Call train_on_responses_only on the text data "
            "set before building the trainer, or use tunesmith.data.prepare_dataset(..., "
            "responses_only=True), which labels answers exactly."
        )
    has_ids = "input_ids" in dataset.column_names
    bos = tokenizer.bos_token
    all_labels, all_ids, unmatched = [], [], 0
    for index, row in enumerate(dataset):
        text = row[text_field]
        ids = (
            row["input_ids"]
            if has_ids
            else tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        )
        labels = _labels_for(text, ids, tokenizer, instruction_part, response_part)
        if labels is None:
            raise TunesmithError(
                f"{name} row {index + 1}: its tokens do not match its text, so answer tokens cannot be "
                "located. Use tunesmith.data.prepare_dataset(..., responses_only=True) to tokenize and label "
                "in one step."
            )
        unmatched += all(x == IGNORE_INDEX for x in labels)
        all_labels.append(labels)
        all_ids.append(list(ids))
    if dataset.num_rows and unmatched == dataset.num_rows:
        raise TunesmithError(
            f"train_on_responses_only masked every label of the {name} data: the response marker "
            f"{response_part!r} occurs in none of its {dataset.num_rows} rows, so training would learn "
            "nothing. The marker must match the template that formatted the text (check the chat template, "
            "or pass response_part= yourself)."
        )
    if unmatched:
        logger.warning(
            "%d of %d %s rows contain no answer after masking (marker %r missing or cut off).",
            unmatched,
            dataset.num_rows,
            name,
            response_part,
        )
    columns = [c for c in ("labels", "input_ids") if c in dataset.column_names]
    return dataset.remove_columns(columns).add_column("input_ids", all_ids).add_column("labels", all_labels)


def train_on_responses_only(
    trainer_or_dataset,
    instruction_part: str | None = None,
    response_part: str | None = None,
    tokenizer=None,
    text_field: str = "text",
):
    """Make the loss count only answer tokens; returns the trainer (changed in place) or a new data set.

    Markers default to the tokenizer's template (a PromptTemplate or a known chat family). Raises a
    TunesmithError naming the cause if every label would be masked.
    """
    import datasets

    if isinstance(trainer_or_dataset, datasets.Dataset):
        if tokenizer is None:
            raise TunesmithError("train_on_responses_only(dataset, ...) needs tokenizer=.")
        return mask_dataset(trainer_or_dataset, tokenizer, instruction_part, response_part, text_field)
    trainer = trainer_or_dataset
    tokenizer = tokenizer or trainer.processing_class
    text_field = getattr(trainer.args, "dataset_text_field", text_field) or text_field
    trainer.train_dataset = mask_dataset(
        trainer.train_dataset, tokenizer, instruction_part, response_part, text_field
    )
    if trainer.eval_dataset is not None and not isinstance(trainer.eval_dataset, dict):
        trainer.eval_dataset = mask_dataset(
            trainer.eval_dataset, tokenizer, instruction_part, response_part, text_field, name="eval"
        )
    return trainer
