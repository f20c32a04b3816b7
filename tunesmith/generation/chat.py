"""``chat(model, tokenizer, "question")``: format with the model's own template, generate on the fast
path (``fast_generate``), stream tokens as they come, return the answer; ``answer_all`` answers several
questions as one left-padded batch.

The prompt comes from the tokenizer: a tunesmith :class:`PromptTemplate` stored as its chat template
(training and inference then share one declaration), else its Jinja chat template with the generation
prompt, else the plain text.
"""

from __future__ import annotations

import sys
from typing import TextIO

import torch
from transformers import TextStreamer

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.generation.generate import fast_generate

__all__ = [
    "chat",
    "answer_all",
    "answer_prompts",
    "question_prompts",
    "build_prompt",
    "prompt_ids",
    "as_messages",
]


def as_messages(message_or_messages, system: str | None = None) -> list[dict]:
    """A chat message list from a string or a list of ``{"role", "content"}`` dicts (system first)."""
    if isinstance(message_or_messages, str):
        messages = [{"role": "user", "content": message_or_messages}]
    else:
        messages = [dict(m) for m in message_or_messages]
    for index, message in enumerate(messages):
        if not isinstance(message.get("content"), str) or message.get("role") not in (
            "system",
            "user",
            "assistant",
        ):
            raise TunesmithError(
                f"Chat message {index} is {message!r}; each message needs a role of 'system', 'user' or "
                "'assistant' and a text 'content'."
            )
    if not messages or messages[-1]["role"] != "user":
        raise TunesmithError("The last chat message must come from the user: it is what the model answers.")
    if system is not None:
        messages = [{"role": "system", "content": system}, *[m for m in messages if m["role"] != "system"]]
    return messages


def build_prompt(tokenizer, messages) -> str:
    """The exact text the model is given for ``messages`` (ending where the answer starts)."""
    messages = as_messages(messages)
    template = PromptTemplate.from_chat_template(getattr(tokenizer, "chat_template", None))
    if template is not None:
        # A PromptTemplate is single-turn: earlier turns render as trained, the last one as a prompt.
        history = messages[:-1]
        head = tokenizer.apply_chat_template(history, tokenize=False) if history else ""
        return head + template.prompt(messages[-1]["content"])
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages if m["role"] != "system")


def prompt_ids(tokenizer, messages) -> torch.Tensor:
    """Token ids (1 x length) of :func:`build_prompt`.

    A Jinja chat template writes its own special tokens, so none are added; a PromptTemplate or plain
    prompt gets the tokenizer's usual ones (e.g. BOS), as training texts do.
    """
    text = build_prompt(tokenizer, messages)
    jinja = bool(getattr(tokenizer, "chat_template", None)) and (
        PromptTemplate.from_chat_template(tokenizer.chat_template) is None
    )
    return tokenizer(text, add_special_tokens=not jinja, return_tensors="pt").input_ids


class _StreamTo(TextStreamer):
    """A ``TextStreamer`` that writes to any text stream instead of stdout."""

    def __init__(self, tokenizer, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def _stop_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's EOS ids and the tokenizer's EOS."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    ids = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    return list(dict.fromkeys(ids))


def _decoding(max_new_tokens: int, temperature: float, top_p: float, repetition_penalty: float = 1.0) -> dict:
    """generate() keywords for greedy (``temperature=0``) or sampled answers, checked first."""
    if max_new_tokens < 1:
        raise TunesmithError(f"max_new_tokens={max_new_tokens} must be at least 1.")
    if temperature < 0:
        raise TunesmithError(f"temperature={temperature} must be 0 (greedy) or more (sampling).")
    if repetition_penalty < 1.0:
        raise TunesmithError(
            f"repetition_penalty={repetition_penalty} must be 1.0 (off) or more: below 1 it rewards repeats."
        )
    penalty = {"repetition_penalty": repetition_penalty} if repetition_penalty != 1.0 else {}
    if temperature > 0:
        return {
            "max_new_tokens": max_new_tokens,
            "do_sample": True,
            "temperature": temperature,
            "top_p": top_p,
            **penalty,
        }
    return {"max_new_tokens": max_new_tokens, "do_sample": False, **penalty}


def chat(
    model,
    tokenizer,
    message_or_messages,
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stream: bool | TextIO = True,
    system: str | None = None,
) -> str:
    """Answer a message (or continue a conversation) and return the answer text.

    ``temperature=0`` decodes greedily (same answer every time); above 0 it samples. ``stream=True``
    prints tokens to stdout as they come, a text stream receives them instead, ``False`` stays quiet.
    """
    decoding = _decoding(max_new_tokens, temperature, top_p)
    ids = prompt_ids(tokenizer, as_messages(message_or_messages, system))
    streamer = _StreamTo(tokenizer, sys.stdout if stream is True else stream) if stream else None
    out = fast_generate(
        model,
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        eos_token_id=_stop_ids(model, tokenizer),
        pad_token_id=_pad_id(tokenizer),
        streamer=streamer,
        **decoding,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def answer_all(
    model,
    tokenizer,
    questions: list[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system: str | None = None,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Answer every question in one batch (prompts left-padded), in the order given."""
    rows = question_prompts(tokenizer, questions, system)
    return answer_prompts(
        model,
        tokenizer,
        rows,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )


def question_prompts(tokenizer, questions: list[str], system: str | None = None) -> list[torch.Tensor]:
    """Each question as the token ids of a chat prompt (the tokenizer's template, an optional system
    message), ready for ``answer_prompts``."""
    return [prompt_ids(tokenizer, as_messages(q, system))[0] for q in questions]


def answer_prompts(
    model,
    tokenizer,
    prompts: list[list[int]] | list[torch.Tensor],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Continue every prompt (token ids, already formatted) in one left-padded batch; the answers in order."""
    decoding = _decoding(max_new_tokens, temperature, top_p, repetition_penalty)
    if not prompts:
        return []
    rows = [torch.as_tensor(p, dtype=torch.long) for p in prompts]
    width = max(len(r) for r in rows)
    pad = _pad_id(tokenizer)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, width - len(row) :] = row
        mask[index, width - len(row) :] = 1
    out = fast_generate(
        model,
        input_ids=ids,
        attention_mask=mask,
        eos_token_id=_stop_ids(model, tokenizer),
        pad_token_id=pad,
        **decoding,
    )
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


def _pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS (what ends an answer anyway)."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id
