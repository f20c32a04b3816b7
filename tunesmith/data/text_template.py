"""Recognise the prompt template behind texts the user formatted themselves (the tutorial's way).

The tutorial fills a ``{}`` prompt with each row's ``instruction``/``input``/``output`` into a ``text`` column
and keeps the source columns. :func:`recognise_prompt_template` finds each row's values inside its text;
when the fixed text around and between them is identical on every row, that text is the prompt template.

Columns map to placeholders by name (``instruction``, ``input``, ``reasoning``, ``output``; the
prompt/completion layout's ``prompt`` -> ``{instruction}``, ``completion`` -> ``{output}``); other columns are
ignored. The ``input`` column becomes ``{reasoning}`` when its value sits inside a tag pair of the fixed
text (``<think>…</think>``, ``<思考>…</思考>``): the tutorial keeps its chain of thought there, which the model
learns to write. Elsewhere ``input`` stays ``{input}``, part of the prompt (Alpaca's context). A column
empty on every row has no place in the text and is left out (its surrounding text stays literal).

:func:`adopt_text_template` declares what was recognised on the tokenizer, or marks the tokenizer as
trained on plain texts of unknown prompt format so the export can warn (:func:`trained_on_unknown_prompt`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from itertools import islice

from tunesmith.data.chat_templates import follows_chat_template
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError

__all__ = [
    "COLUMN_PLACEHOLDERS",
    "recognise_prompt_template",
    "adopt_text_template",
    "trained_on_unknown_prompt",
]

logger = logging.getLogger(__name__)

# Column name -> placeholder; the first column present wins a placeholder (names as in layouts.LAYOUTS).
COLUMN_PLACEHOLDERS = {
    "instruction": "instruction",
    "input": "input",
    "reasoning": "reasoning",
    "output": "output",
    "prompt": "instruction",
    "completion": "output",
}
# The tokenizer attribute holding the chat template that training texts of unknown format did not use.
_UNKNOWN_MARK = "_tunesmith_unknown_prompt"
_MAX_PLACEMENTS = 10_000  # ways to place the values in one text; beyond this the texts are too repetitive
_REFERENCE_CANDIDATES = 200  # rows looked at to pick the one with the fewest ways to place the values
_OPEN_TAG = re.compile(r"<([^<>/\s]+)>\s*$")
_PROBE_QUESTION = "What helps against a headache after long days at work?"


def _strip_eos(text: str, eos: str | None) -> str:
    """The text without the EOS the tutorial appends (the chat template appends it itself)."""
    if eos and text.rstrip().endswith(eos):
        return text.rstrip()[: -len(eos)]
    return text


def _occurrences(text: str, value: str) -> list[int]:
    """Every start of ``value`` in ``text``, overlapping ones included."""
    starts, at = [], text.find(value)
    while at >= 0:
        starts.append(at)
        at = text.find(value, at + 1)
    return starts


def _placements(text: str, values: list[str]):
    """Each way of placing all ``values`` (non-empty) in ``text`` without overlap, as start positions."""
    found = [_occurrences(text, v) for v in values]
    chosen: list[int] = []

    def place(index: int):
        if index == len(values):
            yield tuple(chosen)
            return
        for start in found[index]:
            end = start + len(values[index])
            if all(end <= s or start >= s + len(values[j]) for j, s in enumerate(chosen)):
                chosen.append(start)
                yield from place(index + 1)
                chosen.pop()

    return place(0)


def _placement_count(text: str, values: list[str]) -> int:
    count = 1
    for value in values:
        count *= len(_occurrences(text, value))
    return count


def _literals(
    text: str, values: list[str], starts: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(slot order, fixed text pieces) of one placement: text = L0 v_order0 L1 v_order1 ... Ln."""
    order = tuple(sorted(range(len(values)), key=lambda i: starts[i]))
    pieces, at = [], 0
    for i in order:
        pieces.append(text[at : starts[i]])
        at = starts[i] + len(values[i])
    pieces.append(text[at:])
    return order, tuple(pieces)


def _fits(texts: list[str], slots: list[list[str]], order: tuple[int, ...], pieces: tuple[str, ...]) -> bool:
    """True if every text is exactly the fixed pieces with that row's values in between."""
    for row, text in enumerate(texts):
        built = [pieces[0]]
        for k, slot in enumerate(order):
            built += (slots[slot][row], pieces[k + 1])
        if "".join(built) != text:
            return False
    return True


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _in_tag_pair(before: str, after: str) -> bool:
    """True if the fixed text encloses a value in a tag pair: ``...<think>`` value ``</think>...``."""
    match = _OPEN_TAG.search(before)
    return bool(match) and after.lstrip().startswith(f"</{match.group(1)}>")


def recognise_prompt_template(
    texts: Sequence[str], columns: Mapping[str, Sequence], eos_token: str | None = None
) -> PromptTemplate | None:
    """The prompt template that formatted ``texts`` from their rows' ``columns``, or None.

    ``columns`` maps column names to one value per text (unknown names are ignored; see the module
    docstring for the mapping). Every row is checked: the template is returned only when the fixed text
    is identical on all rows and exactly one placement of the values explains them all. A trailing
    ``eos_token`` is not part of the template.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        return None
    texts = [_strip_eos(t, eos_token) for t in texts]
    names: list[str] = []
    slots: list[list[str]] = []
    for column, placeholder in COLUMN_PLACEHOLDERS.items():
        if column not in columns or placeholder in names:
            continue
        values = list(columns[column])
        if len(values) != len(texts) or not all(isinstance(v, str) for v in values):
            continue
        if any(values):  # a column empty on every row cannot be located; its slot stays fixed text
            names.append(placeholder)
            slots.append(values)
    if "instruction" not in names or "output" not in names:
        return None

    # Placing the values in the row with the fewest possible placements; every other row then has to agree.
    full_rows = (r for r in range(len(texts)) if all(slot[r] for slot in slots))
    reference = min(
        islice(full_rows, _REFERENCE_CANDIDATES),
        key=lambda r: _placement_count(texts[r], [slot[r] for slot in slots]),
        default=None,
    )
    if reference is None:
        return None
    values = [slot[reference] for slot in slots]
    if _placement_count(texts[reference], values) > _MAX_PLACEMENTS:
        return None
    explanations = set()
    for starts in _placements(texts[reference], values):
        order, pieces = _literals(texts[reference], values, starts)
        if _fits(texts, slots, order, pieces):
            explanations.add((order, pieces))
            if len(explanations) > 1:
                return None  # the rows do not tell which placement is the template
    if not explanations:
        return None
    order, pieces = explanations.pop()

    text = _escape(pieces[0])
    for k, slot in enumerate(order):
        name = names[slot]
        if name == "input" and "reasoning" not in names and _in_tag_pair(pieces[k], pieces[k + 1]):
            name = "reasoning"
        text += "{" + name + "}" + _escape(pieces[k + 1])
    try:
        return PromptTemplate(text)
    except TunesmithError:  # e.g. fixed text after the answer: not a format tunesmith can serve
        return None


def _renders_same_prompt(tokenizer, template: PromptTemplate) -> bool:
    """True if the tokenizer's chat template asks a question exactly as ``template`` does."""
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _PROBE_QUESTION}], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # a template that cannot render a single question is no match
        return False
    return rendered == template.prompt(_PROBE_QUESTION)


def adopt_text_template(
    tokenizer, texts: Sequence[str], columns: Mapping[str, Sequence]
) -> PromptTemplate | None:
    """Declare the prompt template recognised in the training ``texts`` on the tokenizer; return it.

    Recognised: ``tokenizer.chat_template`` becomes ``PromptTemplate(...).to_chat_template()`` (as if the user
    had declared it), unless the tokenizer's chat template already renders that prompt, or the user
    declared a different PromptTemplate (kept, with a warning). Not recognised, and the texts do not follow
    the tokenizer's chat template either: the tokenizer is marked, so the export warns.
    """
    if hasattr(tokenizer, _UNKNOWN_MARK):
        delattr(tokenizer, _UNKNOWN_MARK)
    current = getattr(tokenizer, "chat_template", None)
    current = current if isinstance(current, str) else None
    recognised = recognise_prompt_template(texts, columns, getattr(tokenizer, "eos_token", None))
    if recognised is None:
        if not follows_chat_template(texts, current):
            setattr(tokenizer, _UNKNOWN_MARK, current)
        return None
    declared = PromptTemplate.from_chat_template(current)
    if declared is not None and declared.text != recognised.text:
        logger.warning(
            "The training texts follow the prompt template %r, but the tokenizer declares %r; chat, the "
            "probes and the Modelfile keep the declared one. If the texts are right, declare theirs: "
            "tokenizer.chat_template = PromptTemplate(...).to_chat_template().",
            recognised.text,
            declared.text,
        )
        return declared
    if declared is None and not _renders_same_prompt(tokenizer, recognised):
        tokenizer.chat_template = recognised.to_chat_template()  # chat, probes and export read this
    logger.info("Recognised the prompt template of the training texts: %r", recognised.text)
    return recognised


def trained_on_unknown_prompt(tokenizer) -> bool:
    """True if this tokenizer trained on plain texts of unknown prompt format and its chat template (which
    those texts did not use) is still the one it had then."""
    if not hasattr(tokenizer, _UNKNOWN_MARK):
        return False
    return getattr(tokenizer, _UNKNOWN_MARK) == getattr(tokenizer, "chat_template", None)
