"""Recognise a data set's layout from its columns: Alpaca, ShareGPT, OpenAI messages, prompt/completion, text.

``fields=`` maps tunesmith's names onto the user's columns (``{"instruction": "Question", "output":
"Response", "reasoning": "Complex_CoT"}``); a column that is a near-miss of a known name gets a
did-you-mean hint instead of a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import TunesmithError, closest_name

__all__ = ["Layout", "LAYOUTS", "detect_layout", "PREFERENCE", "PROMPTS", "detect_method_layout"]


@dataclass(frozen=True)
class Layout:
    """A data layout: the fields a row must have, and those it may have."""

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    answer: str | None = None  # the field holding the text the model learns to write

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("sharegpt", ("conversations",), ("system",)),
        Layout("messages", ("messages",)),
        Layout("alpaca", ("instruction", "output"), ("input", "reasoning", "system"), answer="output"),
        Layout("prompt_completion", ("prompt", "completion"), answer="completion"),
        Layout("text", ("text",), answer="text"),
    )
}
_KNOWN = sorted({f for layout in LAYOUTS.values() for f in layout.fields})


def detect_layout(
    columns, fields: dict[str, str] | None = None, source: str = "the data", layout: str | None = None
) -> tuple[Layout, dict]:
    """The layout of a data set with these ``columns``, and the mapping {tunesmith field: column}.

    ``layout`` forces a layout by name instead of recognising it.
    ``fields`` overrides the mapping for named fields. Raises a TunesmithError naming the columns found,
    the closest known names, and how to map them.
    """
    columns = list(columns)
    fields = dict(fields or {})
    _check_mapped_columns(fields, columns, source)
    available = set(columns) | set(fields)
    if layout is not None and layout not in LAYOUTS:
        raise TunesmithError(f"Unknown layout '{layout}'; known: {', '.join(LAYOUTS)}.")
    for candidate in [LAYOUTS[layout]] if layout else LAYOUTS.values():
        if all(name in available for name in candidate.required):
            mapping = {name: fields.get(name, name) for name in candidate.fields if name in available}
            return candidate, mapping
    raise TunesmithError(_no_layout_message(columns, source))


def _no_layout_message(columns: list[str], source: str) -> str:
    hints = []
    for column in columns:
        near = closest_name(column.lower(), _KNOWN)
        if near and near != column:
            hints.append(f"column '{column}' looks like '{near}'")
    hint_text = ("; ".join(hints) + " — rename it or map it with fields={...}. ") if hints else ""
    return (
        f"tunesmith does not recognise the layout of {source} (columns: {', '.join(columns) or 'none'}). "
        f"{hint_text}Expected one of: instruction/output (+input, reasoning) [Alpaca]; conversations with "
        "from/value [ShareGPT]; messages with role/content [OpenAI]; prompt/completion; or text. "
        "To use other column names, pass fields={'instruction': 'YourQuestionColumn', 'output': "
        "'YourAnswerColumn'}."
    )


# Preference pairs (DPO, ORPO) and prompts alone (GRPO): each field is text or a list of role/content
# messages.
PREFERENCE = Layout("preference", ("prompt", "chosen", "rejected"))
PROMPTS = Layout("prompts", ("prompt",))


def detect_method_layout(
    columns, layout: Layout, fields: dict[str, str] | None = None, source: str = "the data"
) -> dict[str, str]:
    """The mapping {tunesmith field: column} for the fixed ``layout`` (:data:`PREFERENCE` or :data:`PROMPTS`),
    or a TunesmithError naming the missing field, the closest column and how to map it."""
    columns = list(columns)
    fields = dict(fields or {})
    _check_mapped_columns(fields, columns, source)
    mapping = {name: fields.get(name, name) for name in layout.required}
    for name, column in mapping.items():
        if column not in columns:
            raise TunesmithError(_missing_field_message(name, layout, columns, source))
    return mapping


def _missing_field_message(name: str, layout: Layout, columns: list[str], source: str) -> str:
    near = closest_name(name, columns)
    why = {
        "rejected": "preference training (DPO, ORPO) needs a worse answer beside the chosen one in each row",
        "chosen": "preference training (DPO, ORPO) needs the preferred answer of every row",
        "prompt": "every row needs the prompt the model answers",
    }[name]
    hint = (
        f"rename column '{near}' or map it with fields={{'{name}': '{near}'}}"
        if near
        else (f"add a '{name}' column, or map one of yours with fields={{'{name}': 'YourColumn'}}")
    )
    return (
        f"{source} has no '{name}' column (its columns: {', '.join(columns) or 'none'}): {why}. "
        f"Expected columns: {', '.join(layout.required)}. To fix it, {hint}."
    )


def _check_mapped_columns(fields: dict[str, str], columns: list[str], source: str) -> None:
    """Refuse a ``fields`` entry that maps to a column the data does not have (with the closest name)."""
    for ours, theirs in fields.items():
        if theirs not in columns:
            hint = closest_name(theirs, columns)
            raise TunesmithError(
                f"fields maps '{ours}' to column '{theirs}', but {source} has no such column"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f". Its columns are: {', '.join(columns)}."
            )
