"""The Ollama ``Modelfile`` written next to a GGUF file: ``FROM``, a ``TEMPLATE`` that renders exactly the
prompt format the model was trained with, ``PARAMETER stop`` for every end-of-turn token, ``num_ctx``.

The prompt format comes from (first found) the ``prompt_template`` passed in, or the tokenizer's chat
template (which carries a training ``PromptTemplate`` when one was declared or recognised in the training
texts; a warning says when the model trained on plain texts of unknown format). ``ollama create NAME -f
Modelfile`` then serves the model with the same prompts it saw in training.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith._atomic import atomic_file
from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.data.chat_templates import template_family
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.text_template import trained_on_unknown_prompt
from tunesmith.errors import TunesmithError
from tunesmith.export.ollama_template import ChatPieces, chat_pieces, go_template

__all__ = ["ModelfilePlan", "plan_modelfile", "modelfile_text", "write_modelfile", "MODELFILE_NAME"]

logger = logging.getLogger(__name__)

MODELFILE_NAME = "Modelfile"
DEFAULT_NUM_CTX = 4096  # Ollama allocates the KV cache for num_ctx up front; 128k contexts would not fit
_SPECIAL = re.compile(r"<\|[^|<>]+\|>|<｜[^｜]+｜>|</?s>|\[/?INST\]")


@dataclass(frozen=True)
class ModelfilePlan:
    """What the Modelfile will say, decided before any long work starts."""

    template: str
    stops: tuple[str, ...]
    source: str  # where the prompt format came from, for the Modelfile's comment
    pieces: ChatPieces


def _renderer(tokenizer, chat_template: str):
    def render(messages, add_generation_prompt, continue_final_message):
        return tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
        )

    return render


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _stops(pieces: ChatPieces, tokenizer) -> tuple[str, ...]:
    """End-of-turn texts: the EOS token, the special token that closes an assistant turn and the one that
    opens the next user turn (so generation never runs into a made-up next turn)."""
    found = [tokenizer.eos_token] if getattr(tokenizer, "eos_token", None) else []
    for text in (pieces.assistant_after, pieces.user_before):
        match = _SPECIAL.search(text)
        if match:
            found.append(match.group(0))
    return tuple(dict.fromkeys(s for s in found if s))


def _source(tokenizer, prompt_template) -> tuple[str, str, str | None] | None:
    """(chat template text, description, known family) of the training prompt format, or None."""
    if prompt_template is not None:
        pt = (
            prompt_template
            if isinstance(prompt_template, PromptTemplate)
            else PromptTemplate(str(prompt_template))
        )
        return pt.to_chat_template(), "the declared prompt template", None
    chat_template = getattr(tokenizer, "chat_template", None)
    if not chat_template or not isinstance(chat_template, str):
        return None
    if PromptTemplate.from_chat_template(chat_template):
        return chat_template, "the training prompt template (carried in the tokenizer)", None
    family = template_family(chat_template)
    return chat_template, f"the tokenizer's chat template ({family or 'its own format'})", family


def plan_modelfile(tokenizer, prompt_template=None, required: bool | None = None) -> ModelfilePlan | None:
    """Work out the TEMPLATE and stop tokens, or explain what to pass when no prompt format is known.

    ``required``: True raises when no format is known; None returns None (no Modelfile) with a warning.
    """
    source = _source(tokenizer, prompt_template)
    if source is None:
        message = (
            "A Modelfile needs the prompt format the model was trained with, but the tokenizer has no chat "
            "template and no prompt template was given. Pass prompt_template='...{instruction}...{output}' "
            "(CLI: --prompt-template), or give the tokenizer a chat template with "
            "get_chat_template(tokenizer, 'chatml') before training, or pass modelfile=False."
        )
        if required:
            raise TunesmithError(message)
        logger.warning("%s Writing the GGUF file without a Modelfile.", message)
        return None
    chat_template, description, family = source
    if prompt_template is None and trained_on_unknown_prompt(tokenizer):
        logger.warning(
            "The Modelfile's TEMPLATE is %s, but the model was trained on plain texts that did not use it, "
            "and tunesmith could not recognise their prompt format (e.g. no instruction/output columns "
            "beside the text, or fixed text that differs between rows), so Ollama will prompt the model "
            "differently from training. Declare the training prompt before exporting: "
            "tokenizer.chat_template = PromptTemplate('...{instruction}...{output}').to_chat_template() "
            "(or pass prompt_template=...).",
            description,
        )
    bos = (tokenizer.bos_token if _adds_bos(tokenizer) else "") or ""
    render = _renderer(tokenizer, chat_template)
    try:
        pieces = chat_pieces(render, bos_text=bos, label=description)
    except TunesmithError:
        if family is None:
            raise
        # e.g. Meta's Llama 3 template appends the assistant header even when not asked: cut the family's
        # well-behaved twin and prove it against the tokenizer's own template.
        twin = _renderer(tokenizer, CHAT_FAMILIES[family].template)
        pieces = chat_pieces(render, bos_text=bos, label=description, cut_with=twin)
    if pieces.refuses_system:
        logger.warning(
            "%s has no system role (Gemma 2's refuses one), so the Modelfile's TEMPLATE leaves system "
            "messages out, as training did: put instructions into the user's message instead.",
            description[0].upper() + description[1:],
        )
    return ModelfilePlan(go_template(pieces), _stops(pieces, tokenizer), description, pieces)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def modelfile_text(gguf_file: str, plan: ModelfilePlan, num_ctx: int) -> str:
    """The Modelfile's text for a GGUF file in the same folder."""
    lines = [
        "# Ollama Modelfile written by tunesmith.",
        f"# Prompt format: {plan.source}. Create the model with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_file}",
        f'TEMPLATE """{plan.template}"""',
        *(f"PARAMETER stop {_quote(stop)}" for stop in plan.stops),
        f"PARAMETER num_ctx {int(num_ctx)}",
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_path: Path, plan: ModelfilePlan, num_ctx: int | None = None) -> Path:
    """Write ``folder/Modelfile`` pointing at ``gguf_path``; ``num_ctx`` is capped at 4096 unless given."""
    path = folder / MODELFILE_NAME
    with atomic_file(path, "w") as handle:
        handle.write(modelfile_text(gguf_path.name, plan, num_ctx or DEFAULT_NUM_CTX))
    return path
