"""Translate a Jinja chat template into an Ollama (Go ``text/template``) TEMPLATE that renders the same text.

The chat template is not parsed: it is *rendered* with probe messages and cut into its literal pieces,

    [no-system head] | system: head + CONTENT + after | user: before + CONTENT + after [+ generation prompt
    when last] | assistant: before (or last-turn before) + CONTENT [+ after when not last]

(or, Mistral style, the system text inside the first user turn), which is the shape of every template
tunesmith trains with (ChatML, Llama 3/3.1, Qwen2.5/3, DeepSeek, Mistral, Alpaca, PromptTemplate formats). The
pieces are checked by re-assembling several conversations in Python exactly as the Go template does and
comparing them with the Jinja rendering; a template of another shape is refused rather than translated
wrongly. Ollama passes ``.Messages`` (``.Role``, ``.Content``); like Ollama's own templates, a final assistant
message is left open so the model continues it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.errors import TunesmithError

__all__ = ["ChatPieces", "chat_pieces", "go_template", "assemble", "Renderer"]

_S, _U1, _A1, _U2, _A2 = "SYSPROBE0x5a", "USERPROBE0x1b", "ASSTPROBE0x2c", "USERPROBE0x3d", "ASSTPROBE0x4e"

# render(messages, add_generation_prompt, continue_final_message) -> text, as apply_chat_template gives it
Renderer = Callable[[list[dict], bool, bool], str]


@dataclass(frozen=True)
class ChatPieces:
    """The literal text around each message of a chat template."""

    no_system_head: str  # written when the conversation has no system message (default system prompt...)
    system_head: str | None  # None: the template ignores system messages
    system_after: str
    user_before: str
    user_after: str
    generation: str  # after the last user message: the assistant header the model continues from
    assistant_before: str
    assistant_after: str  # end of an assistant turn (its first token is what stops generation)
    last_assistant_before: str  # some templates (Qwen3) open the final assistant turn differently
    bos_text: str = ""  # BOS text removed from the heads because the tokenizer adds BOS itself
    system_in_user: bool = False  # Mistral style: the system text sits inside the first user turn
    system_prefix: str = ""  # (then) text between the user header and the system text
    refuses_system: bool = False  # the template raises on a system message (Gemma 2): the TEMPLATE drops it


def _msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def _between(text: str, start: str | None, end: str | None) -> str:
    lo = text.index(start) + len(start) if start else 0
    hi = text.index(end, lo) if end else len(text)
    return text[lo:hi]


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(what)
    return text[len(prefix) :]


def _strip_suffix(text: str, suffix: str, what: str) -> str:
    if suffix and not text.endswith(suffix):
        raise ValueError(what)
    return text[: len(text) - len(suffix)] if suffix else text


def _cut(render: Renderer) -> ChatPieces:
    """Probe renderings -> pieces (ValueError when the template is not of the supported shape)."""
    s, u1, a1, u2 = ("system", _S), ("user", _U1), ("assistant", _A1), ("user", _U2)
    no_sys = render(_msgs(u1, a1, u2), True, False)
    try:
        full = render(_msgs(s, u1, a1, u2), True, False)
        lead = [s]
    except Exception:  # a template without a system role (Gemma 2's raises on one): cut it without
        full, lead = no_sys, []
    user_after = _between(render(_msgs(*lead, u1), False, False), _U1, None)
    generation = _strip_prefix(
        _between(render(_msgs(*lead, u1), True, False), _U1, None), user_after, "generation"
    )
    assistant_before = _strip_prefix(_between(full, _U1, _A1), user_after, "assistant header")
    assistant_after = _between(render(_msgs(*lead, u1, a1), False, False), _A1, None)
    user_before = _strip_prefix(_between(full, _A1, _U2), assistant_after, "user header")
    try:
        last_open = render(_msgs(*lead, u1, a1), False, True)
    except Exception:  # templates that cannot leave the last turn open: it opens like the others
        last_open = None
    last_before = (
        _strip_prefix(_between(last_open, _U1, _A1), user_after, "last assistant header")
        if last_open
        else assistant_before
    )
    has_system = _S in full
    head = _between(full, None, _S) if has_system else ""
    gap = _between(full, _S, _U1) if has_system else ""
    system_prefix, system_in_user, system_after = "", False, ""
    if has_system and gap.endswith(user_before):
        system_after = _strip_suffix(gap, user_before, "system end")
    elif has_system and user_before and user_before in head:  # folded into the first user turn
        cut = head.rindex(user_before)
        system_prefix, system_after, system_in_user = head[cut + len(user_before) :], gap, True
        head = head[:cut]
    elif has_system:
        raise ValueError("system message placement")
    no_system_head = _strip_suffix(_between(no_sys, None, _U1), user_before, "head")
    if not has_system:  # the template drops system messages: what precedes the first user turn is fixed
        no_system_head = _strip_suffix(_between(full, None, _U1), user_before, "head")
    return ChatPieces(
        no_system_head=no_system_head,
        system_head=head if has_system else None,
        system_after=system_after,
        user_before=user_before,
        user_after=user_after,
        generation=generation,
        assistant_before=assistant_before,
        assistant_after=assistant_after,
        last_assistant_before=last_before,
        system_in_user=system_in_user,
        system_prefix=system_prefix,
        refuses_system=not lead,
    )


def assemble(pieces: ChatPieces, messages: list[dict]) -> str:
    """Render ``messages`` from the pieces exactly as :func:`go_template`'s output does in Go."""
    has_system = bool(messages) and messages[0]["role"] == "system"
    out = [] if has_system else [pieces.no_system_head]
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        role, content = message["role"], message["content"]
        if role == "system" and pieces.system_head is not None:
            out += (
                [pieces.system_head]
                if pieces.system_in_user
                else [pieces.system_head, content, pieces.system_after]
            )
        elif role == "user":
            folded = pieces.system_in_user and has_system and index == 1
            system = pieces.system_prefix + messages[0]["content"] + pieces.system_after if folded else ""
            out += [pieces.user_before, system, content, pieces.user_after, pieces.generation if last else ""]
        elif role == "assistant":
            before = pieces.last_assistant_before if last else pieces.assistant_before
            out += [before, content, "" if last else pieces.assistant_after]
    return "".join(out)


# Conversations the pieces must reproduce exactly (texts with newlines, quotes and braces on purpose).
_CHECKS = [
    _msgs(("system", "Be brief."), ("user", "What is 2+2?")),
    _msgs(("user", 'Say "hi"\nthen {{stop}}.')),
    _msgs(("system", "S"), ("user", "a"), ("assistant", "b"), ("user", "c")),
    _msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")),
    _msgs(("system", "S"), ("user", "a"), ("assistant", "b")),
    _msgs(("user", "a"), ("assistant", "b")),
]


def _expected(render: Renderer, messages: list[dict], bos_text: str) -> str:
    last_is_assistant = messages[-1]["role"] == "assistant"
    text = render(messages, not last_is_assistant, last_is_assistant)
    return text[len(bos_text) :] if bos_text and text.startswith(bos_text) else text


def chat_pieces(
    render: Renderer, bos_text: str = "", label: str = "the chat template", cut_with: Renderer | None = None
) -> ChatPieces:
    """Cut a chat template into pieces and prove them on several conversations.

    ``bos_text``: the BOS token text when the tokenizer adds BOS itself (llama.cpp and Ollama do too), so
    it is left out of the template. ``cut_with``: an equivalent template to cut instead (for templates
    that, like Meta's original Llama 3 one, always append the assistant header); the proof still uses
    ``render``. Raises TunesmithError when the template cannot be expressed.
    """
    try:
        pieces = _cut(cut_with or render)
    except Exception as err:
        raise _unsupported(label, f"its rendering does not split into turns ({err})") from None
    if bos_text:
        heads = [pieces.no_system_head, pieces.system_head or bos_text]
        if all(h.startswith(bos_text) for h in heads):
            pieces = ChatPieces(
                **{
                    **pieces.__dict__,
                    "no_system_head": pieces.no_system_head[len(bos_text) :],
                    "system_head": None
                    if pieces.system_head is None
                    else pieces.system_head[len(bos_text) :],
                    "bos_text": bos_text,
                }
            )
    for messages in _CHECKS:
        try:
            expected = _expected(render, messages, pieces.bos_text)
        except Exception:  # e.g. templates that require a system message or alternation: skip that shape
            continue
        if assemble(pieces, messages) != expected:
            raise _unsupported(
                label, f"a conversation of roles {[m['role'] for m in messages]} renders differently"
            )
    return pieces


def _unsupported(label: str, why: str) -> TunesmithError:
    return TunesmithError(
        f"tunesmith cannot translate {label} into an Ollama template: {why}. Train and export with a known "
        "format instead (get_chat_template(tokenizer, 'chatml') or a PromptTemplate passed as "
        "prompt_template=...), or pass modelfile=False and write the TEMPLATE yourself."
    )


def _lit(text: str) -> str:
    """A Go template action printing ``text`` literally (JSON string escapes are valid Go escapes)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(pieces: ChatPieces) -> str:
    """The Ollama TEMPLATE text (Go ``text/template`` over Ollama's ``.Messages``)."""
    if pieces.system_head is None:
        system = ""
    elif pieces.system_in_user:
        system = _lit(pieces.system_head)
    else:
        system = f"{_lit(pieces.system_head)}{{{{ .Content }}}}{_lit(pieces.system_after)}"
    folded = (
        '{{ if and (eq $i 1) (eq (index $.Messages 0).Role "system") }}'
        + _lit(pieces.system_prefix)
        + "{{ (index $.Messages 0).Content }}"
        + _lit(pieces.system_after)
        + "{{ end }}"
        if pieces.system_in_user
        else ""
    )
    last_before = (
        _lit(pieces.assistant_before)
        if pieces.last_assistant_before == pieces.assistant_before
        else f"{{{{ if $last }}}}{_lit(pieces.last_assistant_before)}"
        f"{{{{ else }}}}{_lit(pieces.assistant_before)}{{{{ end }}}}"
    )
    head = (
        '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}'
        + _lit(pieces.no_system_head)
        + "{{ end }}"
    )
    lines = [
        *([head] if pieces.no_system_head else []),
        "{{- range $i, $_ := .Messages }}",
        "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
        '{{- if eq .Role "system" }}' + system,
        '{{- else if eq .Role "user" }}'
        + _lit(pieces.user_before)
        + folded
        + "{{ .Content }}"
        + _lit(pieces.user_after)
        + (f"{{{{ if $last }}}}{_lit(pieces.generation)}{{{{ end }}}}" if pieces.generation else ""),
        '{{- else if eq .Role "assistant" }}'
        + last_before
        + "{{ .Content }}"
        + (
            f"{{{{ if not $last }}}}{_lit(pieces.assistant_after)}{{{{ end }}}}"
            if pieces.assistant_after
            else ""
        ),
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(lines)
