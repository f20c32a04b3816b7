"""The tokenizer part of a GGUF file, read from the tokenizer in memory (its ``tokenizer.json``).

Two vocabulary kinds, as llama.cpp names them: ``gpt2`` (byte-level BPE with merges and a pre-tokenizer
name: Llama 3, Qwen, DeepSeek, SmolLM) and ``llama`` (SentencePiece pieces with scores and token types:
Llama 2, Mistral v0.1). The pre-tokenizer is recognised from the splitting rules in ``tokenizer.json``
(see ``gguf_constants.PRE_TOKENIZERS``), so no network look-up or hash table is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import gguf
from gguf import TokenType

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_constants import GPT2_REGEX, PRE_TOKENIZERS, SPM_SPACE

__all__ = ["TokenizerMetadata", "tokenizer_metadata", "write_tokenizer", "pre_tokenizer_name"]

_NEVER_MERGED = -1e9  # pieces no merge produces: rank below every merge
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_LOOKS_SPECIAL = re.compile(r"^(<\|.*\|>|<｜.*｜>|<unk>|<s>|</s>|<pad>|<mask>)$")


@dataclass
class TokenizerMetadata:
    """Everything ``tokenizer.*`` in a GGUF file holds."""

    model: str  # "gpt2" or "llama"
    pre: str | None
    tokens: list[str]
    types: list[TokenType]
    scores: list[float] | None
    merges: list[str]
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def _tokenizer_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TunesmithError(
            f"GGUF export needs a fast (tokenizers-based) tokenizer, but got {type(tokenizer).__name__}. "
            "Load it with AutoTokenizer.from_pretrained(folder) (use_fast is the default)."
        )
    return json.loads(backend.to_str())


def _split_steps(pre: dict | None) -> tuple[str, ...] | None:
    """The regexes a pre-tokenizer splits by, in order; None if it has a step tunesmith cannot read."""
    if pre is None:
        return ()
    kind = pre.get("type")
    if kind == "Sequence":
        steps: list[str] = []
        for sub in pre.get("pretokenizers", []):
            part = _split_steps(sub)
            if part is None:
                return None
            steps.extend(part)
        return tuple(steps)
    if kind == "Split" and pre.get("behavior") == "Isolated" and not pre.get("invert"):
        pattern = pre.get("pattern", {})
        return (pattern["Regex"],) if "Regex" in pattern else None
    if kind == "Digits":
        return (r"\p{N}",) if pre.get("individual_digits") else (r"\p{N}+",)
    if kind == "ByteLevel":
        return (GPT2_REGEX,) if pre.get("use_regex", True) else ()
    return None


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The llama.cpp pre-tokenizer name that splits text as this ``tokenizer.json`` does."""
    pre = tokenizer_json.get("pre_tokenizer")
    steps = _split_steps(pre)
    name = PRE_TOKENIZERS.get(steps) if steps is not None else None
    if name is None:
        raise TunesmithError(
            "GGUF export does not recognise this tokenizer's pre-tokenizer, so llama.cpp would split text "
            f"differently from training. Its tokenizer.json pre_tokenizer is: {json.dumps(pre)[:300]}. "
            f"Recognised: {', '.join(sorted(set(PRE_TOKENIZERS.values())))} (Llama 3, Qwen2/3, DeepSeek-V3, "
            "SmolLM, GPT-2 styles). Please report this tokenizer to tunesmith."
        )
    return name


def _is_spm(tokenizer_json: dict) -> bool:
    """SentencePiece-derived BPE (byte fallback, spaces as U+2581) rather than byte-level BPE."""
    model = tokenizer_json.get("model", {})
    text = json.dumps(
        [tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")], ensure_ascii=False
    )
    return (
        model.get("type") == "BPE"
        and bool(model.get("byte_fallback"))
        and (SPM_SPACE in text or "Metaspace" in text)
    )


def _adds_space_prefix(tokenizer_json: dict) -> bool:
    """Whether the SentencePiece-style tokenizer puts U+2581 before the text (Llama 2: yes; Gemma: no)."""
    steps = [tokenizer_json.get("normalizer") or {}, tokenizer_json.get("pre_tokenizer") or {}]
    steps = [s for step in steps for s in (step.get("normalizers") or step.get("pretokenizers") or [step])]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == SPM_SPACE:
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") != "never" and step.get("add_prefix_space", True)
    return False


def _merges(tokenizer_json: dict) -> list[str]:
    """Merges as ``"left right"`` strings (a space inside a part is written as U+0120, as llama.cpp reads)."""
    merges = tokenizer_json.get("model", {}).get("merges") or []
    out = []
    for merge in merges:
        if isinstance(merge, str):
            out.append(merge)
        else:
            out.append(" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in merge))
    return out


def _merge_scores(tokenizer_json: dict) -> dict[str, float]:
    """SentencePiece scores that reproduce the BPE merge order: llama.cpp's SentencePiece tokenizer merges
    the adjacent pair whose joined piece scores highest; Hugging Face merges the pair ranked first."""
    scores: dict[str, float] = {}
    for rank, merge in enumerate(tokenizer_json.get("model", {}).get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        scores.setdefault(left + right, -float(rank))
    return scores


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int) and token_id >= 0:
            ids[kind] = token_id
    return ids


def _adds_special(tokenizer) -> tuple[bool, bool]:
    """Whether plain ``tokenizer(text)`` adds BOS / EOS, found by encoding a probe both ways."""
    with_special = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    extra = len(with_special) - len(bare)
    add_bos = extra > 0 and tokenizer.bos_token_id is not None and with_special[0] == tokenizer.bos_token_id
    add_eos = extra > 0 and tokenizer.eos_token_id is not None and with_special[-1] == tokenizer.eos_token_id
    return bool(add_bos), bool(add_eos)


def _vocab(tokenizer_json: dict, n_vocab: int, spm: bool, special_ids: dict[str, int]):
    """Tokens, types and (for SentencePiece) scores, indexed by token id and padded to ``n_vocab``."""
    tokens: list[str | None] = [None] * n_vocab
    types = [TokenType.UNUSED] * n_vocab
    scores = [0.0] * n_vocab
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    merge_scores = _merge_scores(tokenizer_json) if spm else {}
    if max(vocab.values(), default=-1) >= n_vocab:
        raise TunesmithError(
            f"The tokenizer has token ids up to {max(vocab.values())}, but the model's embedding has only "
            f"{n_vocab} rows. Resize the embeddings (model.resize_token_embeddings(len(tokenizer))) and "
            "train again."
        )
    for text, token_id in vocab.items():
        tokens[token_id] = text
        types[token_id] = TokenType.NORMAL
        scores[token_id] = merge_scores.get(text, 0.0 if len(text) == 1 else _NEVER_MERGED)
        if spm and len(text) == 6 and _BYTE_PIECE.fullmatch(text):
            types[token_id] = TokenType.BYTE
            scores[token_id] = 0.0
    for added in tokenizer_json.get("added_tokens", []):
        token_id, text = added["id"], added["content"]
        if token_id >= n_vocab:
            raise TunesmithError(
                f"The tokenizer's added token {text!r} has id {token_id}, beyond the model's {n_vocab} "
                "embedding rows. Resize the embeddings (model.resize_token_embeddings(len(tokenizer))) and "
                "train again."
            )
        special = added.get("special") or bool(_LOOKS_SPECIAL.match(text))
        tokens[token_id] = text if special else text.replace(SPM_SPACE, " ")
        types[token_id] = TokenType.CONTROL if special else TokenType.USER_DEFINED
        scores[token_id] = 0.0
    if spm and "unk" in special_ids:
        types[special_ids["unk"]] = TokenType.UNKNOWN
    for token_id, text in enumerate(tokens):
        if text is None:
            tokens[token_id] = f"[PAD{token_id}]"
    return tokens, types, scores


def tokenizer_metadata(tokenizer, n_vocab: int) -> TokenizerMetadata:
    """Read everything the GGUF tokenizer section needs from a Hugging Face fast tokenizer."""
    tj = _tokenizer_json(tokenizer)
    if tj.get("model", {}).get("type") != "BPE":
        raise TunesmithError(
            f"GGUF export supports BPE tokenizers (byte-level or SentencePiece-style); this one is "
            f"'{tj.get('model', {}).get('type')}'. Please report this model to tunesmith."
        )
    spm = _is_spm(tj)
    special_ids = _special_ids(tokenizer)
    tokens, types, scores = _vocab(tj, n_vocab, spm, special_ids)
    add_bos, add_eos = _adds_special(tokenizer)
    return TokenizerMetadata(
        model="llama" if spm else "gpt2",
        pre=None if spm else pre_tokenizer_name(tj),
        tokens=tokens,
        types=types,
        scores=scores if spm else None,
        merges=[] if spm else _merges(tj),
        special_ids=special_ids,
        add_bos=add_bos,
        add_eos=add_eos,
        add_space_prefix=_adds_space_prefix(tj),
        chat_template=getattr(tokenizer, "chat_template", None) or None,
    )


def write_tokenizer(writer: gguf.GGUFWriter, meta: TokenizerMetadata) -> None:
    """Add the ``tokenizer.*`` keys through the writer's typed setters."""
    writer.add_tokenizer_model(meta.model)
    if meta.pre:
        writer.add_tokenizer_pre(meta.pre)
    writer.add_token_list(meta.tokens)
    writer.add_token_types(meta.types)
    if meta.scores is not None:
        writer.add_token_scores(meta.scores)
    if meta.merges:
        writer.add_token_merges(meta.merges)
    for kind, token_id in meta.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(meta.add_bos)
    writer.add_add_eos_token(meta.add_eos)
    if meta.add_space_prefix is not None:
        writer.add_add_space_prefix(meta.add_space_prefix)
    if meta.chat_template:
        writer.add_chat_template(meta.chat_template)
