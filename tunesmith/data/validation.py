"""Check every row before training starts, so a bad row never stops a run half-way.

Each error names the source, the 1-based row number and the field.
"""

from __future__ import annotations

import json

from tunesmith.data.layouts import Layout
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError, closest_name

__all__ = [
    "validate_rows",
    "row_errors",
    "validate_preference_rows",
    "validate_prompt_rows",
    "check_template_fields",
    "find_duplicates",
    "DUPLICATE_POLICIES",
]

DUPLICATE_POLICIES = ("drop", "keep", "error")


def _where(source: str, index: int) -> str:
    return f"{source}, row {index + 1}"


def _check_text(
    value, source: str, index: int, field: str, column: str, *, required: bool, answer: bool
) -> None:
    where = f"{_where(source, index)}, field '{column}'"
    if value is None:
        if required:
            raise TunesmithError(
                f"{where} is missing (null). Every row needs a '{column}' value; fill it or drop the row."
            )
        return
    if not isinstance(value, str):
        raise TunesmithError(
            f"{where} is a {type(value).__name__} ({str(value)[:60]!r}), but '{field}' must be text. "
            "Quote it as a string in the file."
        )
    if required and not value.strip():
        what = "answer" if answer else "value"
        raise TunesmithError(
            f"{where} is empty: a row needs a non-empty {what}. Fill it in or remove the row."
        )


def _check_messages(messages, source: str, index: int, column: str) -> None:
    where = f"{_where(source, index)}, field '{column}'"
    if not isinstance(messages, list) or not messages:
        raise TunesmithError(f"{where} must be a non-empty list of {{'role', 'content'}} messages.")
    _check_message_shapes(messages, where)
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise TunesmithError(f"{where} has no assistant message: there is no answer to learn from.")
    if not answers[-1]["content"].strip():
        raise TunesmithError(f"{where}: the last assistant message is empty. Fill it in or remove the row.")


def _check_row(row: dict, index: int, layout: Layout, mapping: dict[str, str], source: str) -> None:
    """Raise a TunesmithError when row ``index`` (0-based) has a missing field, a wrong type or no answer."""
    for field, column in mapping.items():
        if field in ("conversations", "messages"):
            value = row.get(column)
            if field == "conversations":
                from tunesmith.data.sharegpt import sharegpt_to_messages

                value = sharegpt_to_messages(value, _where(source, index))
            _check_messages(value, source, index, column)
        else:
            _check_text(
                row.get(column),
                source,
                index,
                field,
                column,
                required=field in layout.required,
                answer=field == layout.answer,
            )


def validate_rows(rows: list[dict], layout: Layout, mapping: dict[str, str], source: str) -> None:
    """Raise a TunesmithError at the first row with a missing field, a wrong type or an empty answer."""
    if not rows:
        raise TunesmithError(f"{source} is empty: there are no rows to train on.")
    for index, row in enumerate(rows):
        _check_row(row, index, layout, mapping, source)


def row_errors(
    rows: list[dict], layout: Layout, mapping: dict[str, str], source: str, limit: int = 20
) -> list[str]:
    """The error paragraph of each bad row (at most ``limit``), in row order; empty when every row is fine."""
    found = []
    for index, row in enumerate(rows):
        try:
            _check_row(row, index, layout, mapping, source)
        except TunesmithError as err:
            found.append(str(err))
            if len(found) >= limit:
                break
    return found


def _check_turns(value, source: str, index: int, column: str, *, answer: bool) -> None:
    """A text field, or a list of role/content messages (ending in the assistant's for an answer)."""
    if not isinstance(value, list):
        _check_text(value, source, index, column, column, required=True, answer=answer)
        return
    where = f"{_where(source, index)}, field '{column}'"
    if not value:
        raise TunesmithError(
            f"{where} is an empty list: give text, or a list of {{'role', 'content'}} messages."
        )
    _check_message_shapes(value, where)
    last = value[-1]
    if answer and (last["role"] != "assistant" or not last["content"].strip()):
        raise TunesmithError(
            f"{where} must end with a non-empty assistant message (the answer); it ends with a "
            f"'{last['role']}' message{' that is empty' if not last['content'].strip() else ''}."
        )
    if not answer and last["role"] == "assistant":
        raise TunesmithError(
            f"{where} ends with an assistant message, but a prompt ends where the model starts to answer. "
            "Move the answer to 'chosen' (and 'rejected')."
        )


def validate_preference_rows(rows: list[dict], mapping: dict[str, str], source: str) -> None:
    """Raise a TunesmithError at the first preference row (prompt/chosen/rejected) with a missing or empty
    field, a wrong type, answers of different kinds, or a chosen answer identical to the rejected one."""
    if not rows:
        raise TunesmithError(f"{source} is empty: there are no preference pairs to train on.")
    prompt, chosen, rejected = mapping["prompt"], mapping["chosen"], mapping["rejected"]
    for index, row in enumerate(rows):
        _check_turns(row.get(prompt), source, index, prompt, answer=False)
        _check_turns(row.get(chosen), source, index, chosen, answer=True)
        _check_turns(row.get(rejected), source, index, rejected, answer=True)
        if isinstance(row[chosen], list) != isinstance(row[rejected], list):
            raise TunesmithError(
                f"{_where(source, index)}: '{chosen}' and '{rejected}' must both be text or both be message "
                "lists; this row mixes them. Write both answers the same way."
            )
        if row[chosen] == row[rejected]:
            raise TunesmithError(
                f"{_where(source, index)}: '{chosen}' and '{rejected}' are identical, so the pair teaches no "
                "preference. Give a worse answer as rejected, or remove the row."
            )


def validate_prompt_rows(rows: list[dict], mapping: dict[str, str], source: str) -> None:
    """Raise a TunesmithError at the first row whose prompt is missing, empty or of a wrong type."""
    if not rows:
        raise TunesmithError(f"{source} is empty: there are no prompts to train on.")
    for index, row in enumerate(rows):
        _check_turns(row.get(mapping["prompt"]), source, index, mapping["prompt"], answer=False)


def check_template_fields(template: PromptTemplate, mapping: dict[str, str], columns, source: str) -> None:
    """Refuse a prompt template whose placeholders the data cannot fill."""
    for placeholder in template.placeholders:
        if placeholder not in mapping:
            hint = closest_name(placeholder, columns)
            raise TunesmithError(
                f"The prompt template uses {{{placeholder}}}, but {source} has no '{placeholder}' column"
                + (
                    f" (did you mean '{hint}'? map it with fields={{'{placeholder}': '{hint}'}})"
                    if hint
                    else ""
                )
                + f". Its columns are: {', '.join(columns)}. Remove {{{placeholder}}} from the template or "
                "add the column."
            )


def find_duplicates(rows: list[dict], mapping: dict[str, str]) -> list[int]:
    """Indices of rows that repeat an earlier row exactly (on the fields used for training)."""
    seen, repeats = set(), []
    for index, row in enumerate(rows):
        key = json.dumps([row.get(column) for column in mapping.values()], ensure_ascii=False, sort_keys=True)
        if key in seen:
            repeats.append(index)
        seen.add(key)
    return repeats


def _check_message_shapes(messages: list, where: str) -> None:
    """Each message is a dict with 'role' and a text 'content'; the first that is not is named."""
    for turn, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            keys = ", ".join(message) if isinstance(message, dict) else type(message).__name__
            raise TunesmithError(f"{where}, message {turn} needs 'role' and 'content' (it has: {keys}).")
        if not isinstance(message["content"], str):
            raise TunesmithError(
                f"{where}, message {turn}: 'content' must be text, not {type(message['content']).__name__}."
            )
