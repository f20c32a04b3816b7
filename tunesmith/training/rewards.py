"""Reward functions for GRPO: plain Python callables ``f(prompts, completions, **columns) -> list[float]``,
one number per completion (TRL's convention; ``None`` leaves a completion out of that function's mean).

Built-ins:
- :func:`format_reward`: one ``<think>...</think>`` block, then a non-empty answer (partial credit first);
- :func:`exact_match_reward`: the final answer (a number or an option letter) equals a data column;
- :func:`length_penalty`: negative for completions longer than a limit.

:func:`checked_reward` wraps any reward function so that an exception, a wrong number of rewards or a value
that is not a number becomes one clear error naming the function and the data row.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Callable

from tunesmith.data.preference import ROW_COLUMN
from tunesmith.errors import TunesmithError, closest_name

__all__ = [
    "format_reward",
    "exact_match_reward",
    "length_penalty",
    "checked_reward",
    "resolve_rewards",
    "BUILTIN_REWARDS",
    "final_answer",
]

_THINK = re.compile(r"\s*<think>(?P<thought>.*?)</think>(?P<answer>.*)", re.DOTALL)


def _text(completion) -> str:
    """A completion as text (conversational completions are lists of messages)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _opened(prompt) -> bool:
    """Whether the prompt itself opens the think block (a template ending in ``<think>``)."""
    text = _text(prompt).rstrip()
    return text.endswith("<think>")


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """Up to 1.0 for one ``<think>...</think>`` block, then an answer: 0.25 for opening with ``<think>``,
    0.25 more for closing it exactly once (one block, nothing nested), 0.5 more for a non-empty answer after
    it. The partial credit gives GRPO a signal before any completion is perfect. A prompt that ends in
    ``<think>`` has opened the block itself."""
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = ("<think>" if _opened(prompt) else "") + _text(completion)
        score = 0.0
        if text.lstrip().startswith("<think>"):
            score += 0.25
            match = _THINK.fullmatch(text)
            if match is not None and text.count("<think>") == 1 and text.count("</think>") == 1:
                score += 0.25 + (0.5 if match["answer"].strip() else 0.0)
        scores.append(score)
    return scores


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?:^|[\s(\[:])([A-Ea-e])(?:$|[\s).,\]:])")


def final_answer(completion) -> str | None:
    """The final answer of a completion: after ``</think>`` if there is one, its last number (commas
    dropped), else its last standalone option letter A-E (upper case); None when there is neither."""
    text = _text(completion).rpartition("</think>")[2]
    numbers = _NUMBER.findall(text)
    if numbers:
        return _normal_number(numbers[-1])
    letters = _LETTER.findall(text)
    return letters[-1].upper() if letters else None


def _normal_number(text: str) -> str:
    text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value.is_integer() else str(value)


def exact_match_reward(column: str = "answer") -> Callable:
    """A reward function: 1.0 where :func:`final_answer` of the completion equals the row's ``column``
    (a number or an option letter, compared the same way), else 0.0."""

    def exact_match(prompts, completions, **kwargs) -> list[float]:
        if column not in kwargs:
            known = [
                k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric", "completion_ids")
            ]
            hint = closest_name(column, known)
            raise TunesmithError(
                f"exact_match reads the right answer from the data column '{column}', but the data has no "
                "such "
                f"column" + (f" (did you mean '{hint}'?)" if hint else "") + f"; its columns: "
                f"{', '.join(known) or 'none'}. Name the column: exact_match_reward(column=...) (config: "
                "grpo.answer_column)."
            )
        expected = [final_answer(str(value)) for value in kwargs[column]]
        return [
            float(final_answer(c) is not None and final_answer(c) == e)
            for c, e in zip(completions, expected, strict=True)
        ]

    return exact_match


def length_penalty(max_tokens: int = 256, weight: float = 1.0) -> Callable:
    """A reward function: 0 up to ``max_tokens`` completion tokens, then down linearly to ``-weight`` at
    twice that length (and no lower)."""

    def length(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        lengths = (
            [len(ids) for ids in completion_ids]
            if completion_ids
            else [len(_text(c)) // 4 for c in completions]
        )
        return [-weight * min(1.0, max(0, n - max_tokens) / max_tokens) for n in lengths]

    return length


BUILTIN_REWARDS: dict[str, Callable[..., Callable]] = {
    "format": lambda **_: format_reward,
    "exact_match": lambda answer_column="answer", **_: exact_match_reward(answer_column),
    "length": lambda max_length_tokens=256, length_weight=1.0, **_: length_penalty(
        max_length_tokens, length_weight
    ),
}


def resolve_rewards(rewards, **options) -> list[Callable]:
    """Reward callables from callables and built-in names (``"format"``, ``"exact_match"``, ``"length"``;
    ``options`` are the built-ins' settings), each wrapped by :func:`checked_reward`."""
    if rewards is None or (isinstance(rewards, (list, tuple)) and not rewards):
        raise TunesmithError(
            "GRPOTrainer needs reward_funcs=: a list of reward functions "
            "f(prompts, completions, **columns) -> "
            f"list of floats, or built-in names ({', '.join(BUILTIN_REWARDS)})."
        )
    out = []
    for index, reward in enumerate(rewards if isinstance(rewards, (list, tuple)) else [rewards]):
        if isinstance(reward, str):
            if reward not in BUILTIN_REWARDS:
                hint = closest_name(reward, BUILTIN_REWARDS)
                raise TunesmithError(
                    f"Reward {index + 1} is '{reward}', which is not a built-in reward"
                    + (f" (did you mean '{hint}'?)" if hint else "")
                    + f". Built-in: {', '.join(BUILTIN_REWARDS)}; or pass a Python function."
                )
            reward = BUILTIN_REWARDS[reward](**options)
        if not callable(reward):
            raise TunesmithError(
                f"Reward {index + 1} is a {type(reward).__name__}, not a function. Pass functions "
                "f(prompts, completions, **columns) -> list of floats, or built-in names."
            )
        out.append(checked_reward(reward))
    return out


def _name(func) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def checked_reward(func: Callable) -> Callable:
    """``func`` with its failures turned into errors that name it and the data row (module docstring); the
    tunesmith row-number column is taken out of the columns it receives."""
    if getattr(func, "_tunesmith_checked", False):
        return func
    name = _name(func)

    @functools.wraps(func)
    def checked(prompts, completions, **kwargs):
        rows = kwargs.pop(ROW_COLUMN, None) or [None] * len(prompts)
        try:
            rewards = func(prompts=prompts, completions=completions, **kwargs)
        except TunesmithError:
            raise
        except Exception as err:
            raise _failure(func, name, err, prompts, completions, kwargs, rows) from err
        _check_values(name, rewards, prompts, completions, rows)
        return rewards

    checked._tunesmith_checked = True
    return checked


def _failure(func, name, err, prompts, completions, kwargs, rows) -> TunesmithError:
    """The error for a reward function that raised: find the first completion it fails on alone."""
    n = len(prompts)
    for i in range(n):
        one = {k: (v[i : i + 1] if isinstance(v, list) and len(v) == n else v) for k, v in kwargs.items()}
        try:
            func(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **one)
        except Exception as single:
            err = single
            return TunesmithError(
                f"The reward function '{name}' raised {type(err).__name__}: {err} — on data row {rows[i]} "
                f"(prompt ending {_short(prompts[i], tail=True)}, completion {_short(completions[i])}). "
                "Fix the function so "
                "that it returns a number for every completion (return None to skip one); --debug shows "
                "the traceback."
            )
    return TunesmithError(
        f"The reward function '{name}' raised {type(err).__name__}: {err} — on the batch of data rows "
        f"{', '.join(str(r) for r in dict.fromkeys(rows))} (each row alone works). Fix the function so "
        "that it "
        "returns a number for every completion; --debug shows the traceback."
    )


def _check_values(name, rewards, prompts, completions, rows) -> None:
    try:
        count = len(rewards)
    except TypeError:
        count = None
    if count != len(prompts):
        got = f"{count} rewards" if count is not None else f"a {type(rewards).__name__}"
        raise TunesmithError(
            f"The reward function '{name}' returned {got} for {len(prompts)} completions (data rows "
            f"{', '.join(str(r) for r in dict.fromkeys(rows))}). A reward function must return a list with "
            "exactly one number per completion, in the order given."
        )
    for i, value in enumerate(rewards):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise TunesmithError(
                f"The reward function '{name}' returned {value!r} for data row {rows[i]} (completion "
                f"{_short(completions[i])}); each reward must be a finite number (or None to skip one)."
            )


def _short(value, width: int = 80, tail: bool = False) -> str:
    """A text for an error message: the start (or, for prompts, the end, where the question is)."""
    text = repr(_text(value))
    if len(text) <= width:
        return text
    return "'..." + text[-(width - 4) :] if tail else text[: width - 4] + "...'"
