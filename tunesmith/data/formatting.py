"""Turn one row into training text, and remember where the answer is in it (character spans).

A :class:`PromptTemplate` or the tokenizer's chat template does the formatting; the EOS token is appended
exactly once (not when the text already ends with it, e.g. from a chat template).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.layouts import Layout
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.sharegpt import sharegpt_to_messages
from tunesmith.errors import TunesmithError

__all__ = [
    "Rendered",
    "render_row",
    "render_chat",
    "render_turns",
    "add_eos_once",
    "alpaca_messages",
]


@dataclass(frozen=True)
class Rendered:
    """A formatted row: its ``text`` and the ``(start, end)`` character spans the model learns to write."""

    text: str
    spans: tuple[tuple[int, int], ...]


def add_eos_once(text: str, eos: str | None) -> str:
    """``text`` ending in ``eos`` exactly once (trailing whitespace after an existing EOS is kept)."""
    if not eos or text.rstrip().endswith(eos):
        return text
    return text + eos


def _with_eos(text: str, spans: list[tuple[int, int]], eos: str | None) -> Rendered:
    full = add_eos_once(text, eos)
    if spans and spans[-1][1] == len(text):
        spans[-1] = (spans[-1][0], len(full))
    return Rendered(full, tuple(spans))


def render_chat(messages: list[dict], tokenizer, where: str) -> Rendered:
    """Render a conversation with the tokenizer's chat template; each assistant message is an answer span."""
    if not getattr(tokenizer, "chat_template", None):
        raise TunesmithError(
            f"{where}: the data is a conversation but the tokenizer has no chat template. Set one with "
            'tunesmith.data.get_chat_template(tokenizer, "chatml") or pass a PromptTemplate.'
        )

    def apply(msgs, generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    text = apply(messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = apply(messages[:index], generation_prompt=True) if index else ""
        through = apply(messages[: index + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise TunesmithError(
                f"{where}: the chat template renders the start of this conversation differently once it goes "
                "on, so tunesmith cannot tell which tokens are the answer. Use another template "
                '(get_chat_template(tokenizer, "chatml")) or set responses_only=False.'
            )
        spans.append((len(before), len(through)))
    return _with_eos(text, spans, tokenizer.eos_token)


def alpaca_messages(
    instruction: str, output: str, input: str = "", reasoning: str = "", system: str = ""
) -> list[dict]:
    """An instruction row as a chat: the input joins the question, the reasoning goes before the answer."""
    question = f"{instruction}\n\n{input}" if input else instruction
    answer = f"<think>\n{reasoning}\n</think>\n\n{output}" if reasoning else output
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def render_row(
    row: dict, layout: Layout, mapping: dict[str, str], tokenizer, template: PromptTemplate | None, where: str
) -> Rendered:
    """Format ``row`` (of ``layout``; ``mapping`` = {field: column}) as training text with answer spans."""
    values = {field: row.get(column) for field, column in mapping.items()}
    eos = tokenizer.eos_token
    if layout.name == "text":
        text = values["text"]
        return _with_eos(text, [(0, len(text))], eos)
    if layout.name == "prompt_completion":
        prompt, completion = values["prompt"], values["completion"]
        return _with_eos(prompt + completion, [(len(prompt), len(prompt) + len(completion))], eos)
    if layout.name == "sharegpt":
        return render_chat(sharegpt_to_messages(values["conversations"], where), tokenizer, where)
    if layout.name == "messages":
        return render_chat(values["messages"], tokenizer, where)
    fields = {k: values.get(k) or "" for k in ("instruction", "input", "reasoning", "output", "system")}
    if template is None:
        return render_chat(alpaca_messages(**fields), tokenizer, where)
    instruction = fields["instruction"]
    if fields["input"] and "input" not in template.placeholders:
        instruction = f"{instruction}\n\n{fields['input']}"
    prompt = template.prompt(instruction, fields["input"])
    completion = template.completion(fields["output"], fields["reasoning"])
    return _with_eos(prompt + completion, [(len(prompt), len(prompt) + len(completion))], eos)


def _as_messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def render_turns(prompt, answer, tokenizer, template: PromptTemplate | None, where: str) -> tuple[str, str]:
    """(prompt text, answer text) of a prompt and an answer (each text or role/content messages), formatted
    exactly as :func:`render_row` formats a training row; ``answer=None`` gives the prompt alone, ending
    where the model starts to write. The answer ends with the end-of-sequence token (nothing after it)."""
    eos = tokenizer.eos_token
    if template is not None:
        if not isinstance(prompt, str) or not (answer is None or isinstance(answer, str)):
            raise TunesmithError(
                f"{where}: a PromptTemplate formats text prompts and answers; this row holds messages. Use a "
                "chat template instead (e.g. chat_template='chatml')."
            )
        head = template.prompt(prompt)
        return head, "" if answer is None else add_eos_once(template.completion(answer), eos)
    messages = _as_messages(prompt, "user")
    if answer is None:
        render_chat(
            [*messages, {"role": "assistant", "content": "x"}], tokenizer, where
        )  # checks the template
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, ""
    replies = _as_messages(answer, "assistant")
    rendered = render_chat([*messages, *replies], tokenizer, where)
    start = rendered.spans[sum(1 for m in messages if m["role"] == "assistant")][0]
    completion = rendered.text[start:]
    if eos and completion.rstrip().endswith(eos):  # TRL appends its own EOS unless the answer ends with it
        completion = completion.rstrip()
    return rendered.text[:start], completion
