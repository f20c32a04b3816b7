"""A prompt format declared once and used for training, inference and export, so the three never disagree.

A template is text with placeholders: ``{instruction}`` (required), ``{input}`` (optional), ``{reasoning}``
(optional) and ``{output}`` (required, last). Everything before the first of ``{reasoning}``/``{output}``
is the *prompt* the model is given; the rest is the *completion* it learns to write. The tutorial's
positional style (``{}`` three times: question, reasoning, answer; twice: question, answer) is accepted.

The template travels inside the tokenizer as its chat template (a Jinja text whose first line carries
the template as JSON), so ``tokenizer.apply_chat_template``, a saved tokenizer folder and the GGUF/Ollama
exporters all read the same declaration.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass

from tunesmith.errors import TunesmithError

__all__ = ["PromptTemplate", "PLACEHOLDERS"]

PLACEHOLDERS = ("instruction", "input", "reasoning", "output")
_POSITIONAL = {2: ("instruction", "output"), 3: ("instruction", "reasoning", "output")}
_MARKER = "tunesmith-prompt-template:"


def _named(text: str) -> str:
    """Turn the tutorial's positional ``{}`` fields into named ones."""
    fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    if fields and all(f == "" for f in fields):
        names = _POSITIONAL.get(len(fields))
        if names is None:
            raise TunesmithError(
                f"The prompt template has {len(fields)} empty '{{}}' fields; tunesmith understands 2 "
                "(question, answer) or 3 (question, reasoning, answer). Name the fields instead: "
                "{instruction}, {input}, {reasoning}, {output}."
            )
        parts = iter(names)
        return re.sub(r"\{\}", lambda _: "{" + next(parts) + "}", text)
    return text


@dataclass(frozen=True)
class PromptTemplate:
    """A single-turn prompt format (see the module docstring for the placeholders)."""

    text: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "text", _named(self.text))
            fields = [f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None]
        except ValueError as err:
            raise TunesmithError(
                f"The prompt template is not valid format text ({err}). "
                "Write placeholders as {instruction}, {output}; double braces {{ }} for literal ones."
            ) from None
        unknown = [f for f in fields if f not in PLACEHOLDERS]
        if unknown:
            raise TunesmithError(
                f"The prompt template names the placeholder {{{unknown[0]}}}, which tunesmith does not know. "
                f"Use only {', '.join('{' + p + '}' for p in PLACEHOLDERS)}."
            )
        for required in ("instruction", "output"):
            if fields.count(required) != 1:
                raise TunesmithError(
                    f"The prompt template must contain {{{required}}} exactly once "
                    f"(found {fields.count(required)})."
                )
        if fields[-1] != "output" or self.text.rstrip()[-len("{output}") :] != "{output}":
            raise TunesmithError(
                "The prompt template must end with {output}: the answer is what the model writes last."
            )
        if "reasoning" in fields and fields.index("reasoning") < fields.index("instruction"):
            raise TunesmithError("In the prompt template, {reasoning} must come after {instruction}.")

    # -- the pieces -------------------------------------------------------------------------------
    @property
    def placeholders(self) -> tuple[str, ...]:
        """The placeholders this template uses, in order."""
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.text) if f is not None)

    def _split(self) -> tuple[str, str]:
        """(prompt part, completion part) of the raw template text."""
        first = "{reasoning}" if "{reasoning}" in self.text else "{output}"
        cut = self.text.index(first)
        return self.text[:cut], self.text[cut:]

    def prompt(self, instruction: str, input: str = "") -> str:
        """The text the model is given: everything up to the answer (or the reasoning)."""
        head, _ = self._split()
        return head.format(instruction=instruction, input=input)

    def completion(self, output: str, reasoning: str = "") -> str:
        """The text the model learns to write (without the end-of-sequence token)."""
        _, tail = self._split()
        return tail.format(output=output, reasoning=reasoning)

    def format(self, instruction: str, output: str, input: str = "", reasoning: str = "") -> str:
        """Prompt and completion together, as one training text (the caller appends EOS once)."""
        return self.prompt(instruction, input) + self.completion(output, reasoning)

    # -- travelling inside the tokenizer ---------------------------------------------------------
    def to_chat_template(self) -> str:
        """A Jinja chat template that renders messages exactly as :meth:`prompt` / :meth:`completion`.

        The user message fills ``{instruction}`` (``{input}`` stays empty), the assistant message is the
        completion text as the model wrote it, followed by ``eos_token``; a system message is not used.
        """
        head, _ = self._split()
        before, after = head.split("{instruction}")

        def lit(text: str) -> str:
            return (
                "{{ " + json.dumps(text.replace("{input}", "").replace("{{", "{").replace("}}", "}")) + " }}"
            )

        return (
            "{#- " + _MARKER + " " + json.dumps({"text": self.text}, ensure_ascii=True) + " -#}\n"
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'user' -%}"
            + lit(before)
            + "{{ message['content'] }}"
            + lit(after)
            + "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}{{ eos_token }}"
            "{%- endif -%}"
            "{%- endfor -%}"
        )

    @classmethod
    def from_chat_template(cls, chat_template: str | None) -> PromptTemplate | None:
        """The template a chat template was made from by :meth:`to_chat_template`, else None."""
        if not chat_template or _MARKER not in chat_template:
            return None
        first_line = chat_template.split("\n", 1)[0]
        payload = first_line.split(_MARKER, 1)[1].rsplit("-#}", 1)[0]
        return cls(json.loads(payload)["text"])
