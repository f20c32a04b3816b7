"""Check a GGUF file against the PyTorch model it came from, in llama.cpp itself (llama-cpp-python).

For each prompt: are the token ids identical (llama.cpp's tokenizer vs the Hugging Face one)? Does
llama.cpp's most likely next token agree with PyTorch's at every prompt position (top-1 agreement)? Do
both write the same greedy 32-token continuation? Thresholds per file type: tokenization identical always;
top-1 agreement >= 99% for f32/f16/bf16/q8_0 and >= 90% for 4-to-6-bit files.

Near-ties: where PyTorch itself rates llama.cpp's choice within ``tie_margin`` standard deviations of that
position's logits (default 0.2) of its own top token, the two are tied and any rounding may pick either
(llama.cpp also rounds activations to 8 bits in q8_0 matrix products). Such positions count as agreeing;
the strict share is reported beside it. Measured on SmolLM2-135M: q8_0 flips of the base model lie within
0.06 sd, but after 3 LoRA steps two of 139 positions flipped at 0.12-0.15 sd (the same adapter trained
through PEFT's layers, 3% apart, flipped none beyond 0.1: where a model's near-ties fall is chance); q4_k_m
flips up to 0.19 sd, while the median gap between a model's first and second choice is 0.3 sd and a wrong
model's choice falls sd's short, so wrong exports (rope, weight layout, tokenizer, another model) still fail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_constants import QUANT_METHODS
from tunesmith.export.llama_cpp import evaluate_in_llama_cpp, require_llama_cpp

__all__ = ["verify_gguf", "VerifyReport", "PromptCheck", "DEFAULT_PROMPTS"]

DEFAULT_PROMPTS = (
    "What are common causes of fatigue?",
    "Explain in two sentences why the sky is blue.",
    "def fibonacci(n):\n    ",
    # A longer text gives top-1 agreement enough positions to mean something.
    "The heart pumps blood through two circuits. The pulmonary circuit carries blood to the lungs, where it "
    "releases carbon dioxide and takes up oxygen; the systemic circuit carries oxygen-rich blood to every "
    "organ. A healthy adult heart beats sixty to one hundred times a minute at rest, and",
)
_UNKNOWN_FILE_TYPE_TOP1 = 0.90  # a file type tunesmith does not write: the lenient threshold


def _top1_threshold(file_type: str) -> float:
    """The minimum top-1 agreement for a llama.cpp file type name (``MOSTLY_Q8_0``), from QUANT_METHODS."""
    return next(
        (m.top1_threshold for m in QUANT_METHODS.values() if m.file_type.name == file_type),
        _UNKNOWN_FILE_TYPE_TOP1,
    )


@dataclass
class PromptCheck:
    """The comparison for one prompt."""

    prompt: str
    tokens_equal: bool
    n_tokens: int
    top1_agree: int  # positions where both pick the same next token, or a near-tie (see module docstring)
    top1_agree_strict: int  # positions where both pick exactly the same next token
    greedy_equal: bool
    greedy_common_prefix: int  # tokens the two greedy continuations share from the start
    greedy_torch: str
    greedy_llama_cpp: str


@dataclass
class VerifyReport:
    """Verification of one GGUF file; ``passed`` says whether every threshold holds."""

    gguf_path: Path
    file_type: str
    top1_threshold: float
    checks: list[PromptCheck] = field(default_factory=list)

    @property
    def tokenization_identical(self) -> bool:
        """Whether llama.cpp and Hugging Face tokenized every prompt identically."""
        return all(c.tokens_equal for c in self.checks)

    @property
    def top1_agreement(self) -> float:
        """Share of prompt positions where the top-1 next token agrees."""
        total = sum(c.n_tokens for c in self.checks)
        return sum(c.top1_agree for c in self.checks) / total if total else 0.0

    @property
    def top1_agreement_strict(self) -> float:
        """Share of positions where the top-1 next token is exactly the same (near-ties count as misses)."""
        total = sum(c.n_tokens for c in self.checks)
        return sum(c.top1_agree_strict for c in self.checks) / total if total else 0.0

    @property
    def greedy_matches(self) -> int:
        """How many prompts got the same greedy continuation."""
        return sum(c.greedy_equal for c in self.checks)

    @property
    def passed(self) -> bool:
        """Tokenization identical and top-1 agreement at or above the threshold."""
        return (
            bool(self.checks) and self.tokenization_identical and self.top1_agreement >= self.top1_threshold
        )

    def summary(self) -> str:
        """A short human-readable report."""
        ok = "PASS" if self.passed else "FAIL"
        lines = [
            f"{ok}  {self.gguf_path.name} ({self.file_type})",
            f"  tokenization identical: {'yes' if self.tokenization_identical else 'NO'} "
            f"({sum(c.tokens_equal for c in self.checks)}/{len(self.checks)} prompts)",
            f"  top-1 next-token agreement: {self.top1_agreement:.1%} over "
            f"{sum(c.n_tokens for c in self.checks)} positions (needs >= {self.top1_threshold:.0%}; "
            f"exact without near-ties: {self.top1_agreement_strict:.1%})",
            f"  greedy continuations identical: {self.greedy_matches}/{len(self.checks)}",
        ]
        for check in self.checks:
            if not check.greedy_equal:
                lines.append(
                    f"    differs after {check.greedy_common_prefix} tokens for {check.prompt[:40]!r}: "
                    f"torch {check.greedy_torch[:60]!r} / llama.cpp {check.greedy_llama_cpp[:60]!r}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain data for JSON reports."""
        return {
            "gguf": str(self.gguf_path),
            "file_type": self.file_type,
            "passed": self.passed,
            "tokenization_identical": self.tokenization_identical,
            "top1_agreement": self.top1_agreement,
            "top1_agreement_strict": self.top1_agreement_strict,
            "top1_threshold": self.top1_threshold,
            "greedy_matches": self.greedy_matches,
            "prompts": len(self.checks),
        }


def _file_facts(path: Path) -> tuple[str, int | None]:
    """(llama.cpp file type name, the file's own end-of-sequence token id) from the GGUF header."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        file_type = reader.get_field(gguf.Keys.General.FILE_TYPE)
        eos = reader.get_field(gguf.Keys.Tokenizer.EOS_ID)
        name = "MOSTLY_F16" if file_type is None else gguf.LlamaFileType(int(file_type.contents())).name
    # the reader parses untrusted bytes with numpy: a fake or cut-off header fails in many ways
    # (ValueError, IndexError, KeyError, OSError, struct.error), all meaning "not a readable GGUF"
    except Exception as err:
        raise TunesmithError(
            f"{path} is not a readable GGUF file ({type(err).__name__}: {' '.join(str(err).split())[:160]}). "
            "Pass a .gguf file written by tunesmith or llama.cpp; if an export was interrupted, export again."
        ) from None
    return name, None if eos is None else int(eos.contents())


def _load_against(against):
    """(model, tokenizer) from a folder / model name, or a (model, tokenizer) pair."""
    if isinstance(against, (tuple, list)) and len(against) == 2:
        return against
    if isinstance(against, (str, os.PathLike)):
        from tunesmith.export.source import load_for_export

        return load_for_export(against)
    raise TunesmithError(
        f"verify_gguf(against=...) takes a model folder or name, or a (model, tokenizer) pair; got "
        f"{type(against).__name__}."
    )


def _default_prompts(tokenizer) -> list[str]:
    """Chat-formatted prompts when the tokenizer has a chat template (what Ollama sends), else plain ones."""
    prompts = list(DEFAULT_PROMPTS)
    if getattr(tokenizer, "chat_template", None):
        try:
            return [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts[:2]
            ] + prompts[2:]
        except Exception:  # a template that rejects a lone user message: plain prompts still verify the file
            return prompts
    return prompts


@torch.no_grad()
def _torch_greedy(model, ids: list[int], steps: int, eos: set[int]) -> tuple[np.ndarray, list[int]]:
    """Prompt logits and the greedy continuation (stopping at an end token)."""
    device = next(model.parameters()).device
    seq = torch.tensor([ids], device=device)
    prompt_logits = model(input_ids=seq).logits[0].float().cpu().numpy()
    from transformers import GenerationConfig

    from tunesmith.generation.generate import fast_generate

    greedy = GenerationConfig(  # explicit: no repetition penalty or sampling from the model's own config
        max_new_tokens=steps, do_sample=False, eos_token_id=sorted(eos), pad_token_id=min(eos, default=0)
    )
    generated = fast_generate(
        model, input_ids=seq, attention_mask=torch.ones_like(seq), generation_config=greedy
    )
    return prompt_logits, generated[0, len(ids) :].tolist()


def _context_length(ids: list[list[int]], max_new_tokens: int) -> int:
    """The longest prompt plus its continuation, rounded up to 64 positions."""
    needed = max((len(i) for i in ids), default=0) + max_new_tokens + 1
    return -(-needed // 64) * 64


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _top1(torch_logits: np.ndarray, cpp_logits: np.ndarray, tie_margin: float) -> tuple[int, int]:
    """(positions agreeing up to near-ties, positions agreeing exactly)."""
    choice = cpp_logits.argmax(-1)
    exact = choice == torch_logits.argmax(-1)
    shortfall = torch_logits.max(-1) - np.take_along_axis(torch_logits, choice[:, None], -1)[:, 0]
    tied = shortfall <= tie_margin * torch_logits.std(-1)
    return int((exact | tied).sum()), int(exact.sum())


def verify_gguf(
    gguf_path,
    against,
    prompts=None,
    *,
    max_new_tokens: int = 32,
    n_ctx: int | None = None,
    tie_margin: float = 0.2,
) -> VerifyReport:
    """Compare ``gguf_path`` in llama.cpp with ``against`` (a model folder/name or ``(model, tokenizer)``).

    ``prompts``: raw texts (default: chat-formatted questions, a code prompt and a paragraph). Each is
    tokenized by both tokenizers; PyTorch's token ids are then fed to both models. ``tie_margin``: see the
    module docstring (0 makes top-1 agreement strict). ``n_ctx``: llama.cpp's context; by default just
    what the longest prompt and its continuation need (llama.cpp keeps logits for every context position:
    with Gemma's 262k vocabulary, 1 GB per 1,024 positions).
    """
    path = Path(gguf_path)
    if not path.is_file():
        raise TunesmithError(f"The GGUF file {path} does not exist. Pass the path of a .gguf file.")
    require_llama_cpp("Verifying a GGUF file")
    file_type, file_eos = _file_facts(path)
    model, tokenizer = _load_against(against)
    report = VerifyReport(path, file_type, _top1_threshold(file_type))
    eos = {t for t in (tokenizer.eos_token_id, file_eos) if t is not None and t >= 0}
    texts = list(prompts or _default_prompts(tokenizer))
    ids = [tokenizer(text)["input_ids"] for text in texts]
    cpp = evaluate_in_llama_cpp(
        path,
        list(zip(texts, ids, strict=True)),
        max_new_tokens=max_new_tokens,
        eos=eos,
        n_ctx=n_ctx or _context_length(ids, max_new_tokens),
    )
    was_training = model.training
    model.eval()
    try:
        for text, prompt_ids, theirs in zip(texts, ids, cpp, strict=True):
            torch_logits, torch_greedy = _torch_greedy(model, prompt_ids, max_new_tokens, eos)
            agree, agree_strict = _top1(torch_logits, theirs.logits, tie_margin)
            report.checks.append(
                PromptCheck(
                    prompt=text,
                    tokens_equal=theirs.tokens == list(prompt_ids),
                    n_tokens=len(prompt_ids),
                    top1_agree=agree,
                    top1_agree_strict=agree_strict,
                    greedy_equal=torch_greedy == theirs.greedy,
                    greedy_common_prefix=_common_prefix(torch_greedy, theirs.greedy),
                    greedy_torch=tokenizer.decode(torch_greedy),
                    greedy_llama_cpp=tokenizer.decode(theirs.greedy),
                )
            )
    finally:
        model.train(was_training)
    return report
