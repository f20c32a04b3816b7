"""ShareGPT rows (``conversations``: ``from``/``value``) to ``messages`` (``role``/``content``)."""

from __future__ import annotations

from tunesmith.errors import TunesmithError

__all__ = ["standardize_sharegpt", "sharegpt_to_messages", "ROLE_NAMES"]

ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


def sharegpt_to_messages(conversation, where: str = "row", roles: dict[str, str] | None = None) -> list[dict]:
    """One ShareGPT conversation as ``{"role", "content"}`` messages (``roles`` adds speaker names)."""
    roles = {**ROLE_NAMES, **(roles or {})}
    if not isinstance(conversation, list):
        raise TunesmithError(
            f"{where}: 'conversations' must be a list of turns, not {type(conversation).__name__}."
        )
    messages = []
    for index, turn in enumerate(conversation, start=1):
        if not isinstance(turn, dict):
            raise TunesmithError(f"{where}, turn {index}: a turn must be an object with 'from' and 'value'.")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        role = roles.get(str(speaker).lower())
        if role is None:
            raise TunesmithError(
                f"{where}, turn {index}: unknown speaker from={speaker!r}. Use one of: "
                f"{', '.join(sorted(roles))}."
            )
        if not isinstance(text, str):
            raise TunesmithError(f"{where}, turn {index}: 'value' must be text, not {type(text).__name__}.")
        messages.append({"role": role, "content": text})
    return messages


def standardize_sharegpt(dataset, aliases: dict[str, str] | None = None):
    """Turn a ShareGPT ``datasets.Dataset`` (column ``conversations``) into one with a ``messages`` column.

    ``aliases`` adds speaker names (e.g. ``{"doctor": "assistant"}``).
    """
    roles = {k.lower(): v for k, v in (aliases or {}).items()}
    if "conversations" not in dataset.column_names:
        raise TunesmithError(
            "standardize_sharegpt needs a 'conversations' column; this data set has "
            f"{', '.join(dataset.column_names)}."
        )

    def convert(row, index):
        return {"messages": sharegpt_to_messages(row["conversations"], f"row {index + 1}", roles)}

    return dataset.map(convert, with_indices=True, remove_columns=["conversations"])
