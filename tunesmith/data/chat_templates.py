"""Chat templates: put a known family's template on a tokenizer, and recognise which family a template is.

``get_chat_template(tokenizer, "chatml")`` mirrors Unsloth's helper. ``template_family`` renders a probe
conversation with any template and compares its turn markers with the families in
:mod:`tunesmith.data.chat_template_table`, so a tokenizer's own (vendor-written) template is recognised too.
"""

from __future__ import annotations

import logging

from tunesmith.data.chat_template_table import CHAT_FAMILIES, QWEN_DEFAULT_SYSTEM, ChatFamily
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError, closest_name

__all__ = [
    "get_chat_template",
    "template_family",
    "turn_markers_family",
    "EMPTY_REASONING",
    "chat_family",
    "follows_chat_template",
    "OWN_TEMPLATE_NAMES",
]

logger = logging.getLogger(__name__)

OWN_TEMPLATE_NAMES = ("own", "tokenizer", "default")
_ALIASES = {
    "llama3": "llama-3",
    "llama-3.1": "llama-3",
    "llama-31": "llama-3",
    "qwen2.5": "qwen-2.5",
    "qwen-25": "qwen-2.5",
    "qwen25": "qwen-2.5",
    "im_start": "chatml",
    "zephyr_chatml": "chatml",
}

_PROBE_SYSTEM = "SYSTEM-PROBE-7c1"
_PROBE_USER = "USER-PROBE-3f9"
_PROBE_ASSISTANT = "ASSISTANT-PROBE-e52"


def chat_family(name: str) -> ChatFamily:
    """The family row for ``name`` (aliases like ``"llama3"`` accepted); a clear error for unknown names."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in CHAT_FAMILIES:
        hint = closest_name(key, CHAT_FAMILIES)
        raise TunesmithError(
            f"Unknown chat template '{name}'"
            + (f" (did you mean '{hint}'?)" if hint else "")
            + f". Known: {', '.join(CHAT_FAMILIES)}, or 'own' for the tokenizer's own template."
        )
    return CHAT_FAMILIES[key]


def get_chat_template(
    tokenizer,
    chat_template: str = "chatml",
    mapping: dict | None = None,
    map_eos_token: bool = True,
    system_message: str | None = None,
):
    """Set ``tokenizer.chat_template`` to a known family's template and return the tokenizer.

    ``chat_template="own"`` keeps the tokenizer's template (an error if it has none). With
    ``map_eos_token`` the family's end-of-turn text (e.g. ``<|im_end|>``) becomes the EOS token when the
    vocabulary has it as one token, so a trained model stops after its answer. ``mapping`` (Unsloth's
    ShareGPT key mapping) is accepted; tunesmith standardises ShareGPT rows itself. ``system_message``
    replaces the family's default system prompt where it has one.
    """
    del mapping  # ShareGPT rows are standardised before templating (see standardize_sharegpt)
    if chat_template is None or chat_template.lower() in OWN_TEMPLATE_NAMES:
        if not getattr(tokenizer, "chat_template", None):
            names = ", ".join(f'"{n}"' for n in CHAT_FAMILIES)
            raise TunesmithError(
                f"The tokenizer has no chat template of its own. Pick one of {names}: "
                'get_chat_template(tokenizer, "chatml").'
            )
        return tokenizer
    family = chat_family(chat_template)
    text = family.template
    if system_message is not None:
        text = _with_system(text, family, system_message)
    tokenizer.chat_template = text
    if map_eos_token and family.stop and family.stop != tokenizer.eos_token:
        if family.stop in tokenizer.get_vocab():
            tokenizer.eos_token = family.stop
        else:
            logger.warning(
                "The %s template ends turns with %s, which this tokenizer splits into several tokens; "
                "the model learns it as text. The tokenizer's own template ('own') may suit it better.",
                family.name,
                family.stop,
            )
    return tokenizer


def _with_system(text: str, family: ChatFamily, system_message: str) -> str:
    """Prepend a default system message when the conversation has none."""
    escaped = system_message.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    if family.name == "qwen-2.5":
        return text.replace(QWEN_DEFAULT_SYSTEM, escaped)
    return (
        "{%- if messages[0]['role'] != 'system' -%}"
        "{%- set messages = [{'role': 'system', 'content': '" + escaped + "'}] + messages -%}"
        "{%- endif -%}" + text
    )


def _render(template: str, messages: list[dict], eos: str = "</s>", bos: str = "<s>") -> str | None:
    """Render ``messages`` with a Jinja chat template as transformers does; None if it cannot."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template(
            conversations=[messages], chat_template=template, eos_token=eos, bos_token=bos
        )
    except Exception:  # a template that rejects the probe (e.g. requires alternation) is simply no match
        return None
    return rendered[0]


# What Qwen3's template writes before an answer that has no reasoning (the answer's own first tokens).
EMPTY_REASONING = "<think>\n\n</think>\n\n"


def _has_markers(text: str, family: ChatFamily, reasoning: str = "") -> bool:
    """True if the user and assistant probe texts follow the family's turn markers (with ``reasoning``
    allowed between the assistant marker and the answer)."""
    u, a = text.find(_PROBE_USER), text.find(_PROBE_ASSISTANT)
    if u < 0 or a < u:
        return False
    before_user = text[:u].rstrip(" ")
    between = text[u + len(_PROBE_USER) : a].rstrip(" ").removesuffix(reasoning)
    return before_user.endswith(family.instruction_part.rstrip(" ")) and between.endswith(
        family.response_part.rstrip(" ")
    )


_PROBE_CONVERSATION = [
    {"role": "system", "content": _PROBE_SYSTEM},
    {"role": "user", "content": _PROBE_USER},
    {"role": "assistant", "content": _PROBE_ASSISTANT},
]


def _rendered_probe(template: str) -> str | None:
    """The probe conversation rendered by ``template`` (without its system turn where the template refuses
    one, as Gemma 2's does); None when it cannot render it."""
    return _render(template, _PROBE_CONVERSATION) or _render(template, _PROBE_CONVERSATION[1:])


def template_family(tokenizer_or_template) -> str | None:
    """Which known family (``"chatml"``, ``"llama-3"``, ...) a chat template renders like, else None.

    Accepts a tokenizer or a Jinja text. A template made from a :class:`PromptTemplate` is its own format
    and gives None (read it with ``PromptTemplate.from_chat_template``).
    """
    template = getattr(tokenizer_or_template, "chat_template", tokenizer_or_template)
    if not isinstance(template, str) or not template or PromptTemplate.from_chat_template(template):
        return None
    full = _PROBE_CONVERSATION
    rendered = _rendered_probe(template)
    if rendered is None:
        return None
    no_system = _render(template, full[1:]) or ""
    for family in CHAT_FAMILIES.values():  # exact rendering first, with and without a system message
        if (rendered, no_system) == (_render(family.template, full), _render(family.template, full[1:])):
            return family.name
    for family in CHAT_FAMILIES.values():
        if family.name == "alpaca" or not _has_markers(rendered, family):
            continue
        if family.name == "qwen-2.5" and "You are Qwen" not in no_system:
            continue
        return family.name
    return None


def turn_markers_family(template: str) -> str | None:
    """The known family whose turn markers a chat template uses, also where it writes an empty reasoning
    block before each answer (Qwen3: ChatML markers): for finding answers, not for rendering."""
    rendered = _rendered_probe(template)
    for family in CHAT_FAMILIES.values():
        if rendered and family.name != "alpaca" and _has_markers(rendered, family, EMPTY_REASONING):
            return family.name
    return None


def follows_chat_template(texts, chat_template: str | None) -> bool:
    """True if every text holds the fixed text ``chat_template`` puts between a user message and the
    assistant's answer (e.g. ``<|im_end|>\\n<|im_start|>assistant``): the texts were rendered with it."""
    if not isinstance(chat_template, str) or not chat_template:
        return False
    rendered = _render(
        chat_template,
        [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT}],
    )
    if rendered is None:
        return False
    u, a = rendered.find(_PROBE_USER), rendered.find(_PROBE_ASSISTANT)
    if u < 0 or a < u:
        return False
    between = rendered[u + len(_PROBE_USER) : a].strip()
    return bool(between) and all(isinstance(t, str) and between in t for t in texts)
