"""Whether training made the answers better, not only the loss lower.

A sample of held-out questions is answered before and after training; each answer is scored against the
held-out row's own answer with ROUGE-L (the longest common subsequence of words, as an F-measure, from
``rouge-score``), and answers that repeat a sentence are counted. The question and its reference come
from the tokenized held-out row itself: the tokens before the first trained (labelled) token are the
prompt, the labelled span is the reference, so every data layout and prompt format is read the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from tunesmith.constants import IGNORE_INDEX

__all__ = [
    "HeldOutQuestion",
    "held_out_questions",
    "rouge_l",
    "mean_rouge_l",
    "mean_score",
    "repeated_sentences",
]

# Han, kana and hangul have no spaces between words: each character counts as one word, as is usual
# for ROUGE on Chinese; every other script is split into runs of letters and digits.
_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|[。！？\n]+")
_MIN_REPEAT_WORDS = 4  # shorter repeats ("Yes.", "Symptoms:") are how answers are written, not a loop


@dataclass(frozen=True)
class HeldOutQuestion:
    """A held-out row split where the answer starts: its prompt ids, the prompt as text, the reference."""

    prompt_ids: list[int]
    question: str
    reference: str


def held_out_questions(eval_set, tokenizer, limit: int) -> list[HeldOutQuestion]:
    """Up to ``limit`` held-out rows with both a prompt and a trained answer, in their order.

    A row trained on as a whole (``train_on_responses_only`` off, or plain text) has no prompt to ask
    and is skipped.
    """
    found: list[HeldOutQuestion] = []
    for row in eval_set if eval_set is not None else []:
        if len(found) == limit:
            break
        ids, labels = list(row["input_ids"]), list(row["labels"])
        start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0)
        if start == 0:
            continue
        end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
        reference = tokenizer.decode(ids[start:end], skip_special_tokens=True).strip()
        if reference:
            question = " ".join(tokenizer.decode(ids[:start], skip_special_tokens=True).split())
            found.append(HeldOutQuestion(ids[:start], question, reference))
    return _without_shared_template(found)


def _without_shared_template(found: list[HeldOutQuestion]) -> list[HeldOutQuestion]:
    """The questions without the words every prompt shares (the system prompt, the role markers), so the
    report shows what was asked; a lone question is kept whole."""
    if len(found) < 2:
        return found
    words = [q.question.split(" ") for q in found]
    head = len(os.path.commonprefix(words))
    tail = len(os.path.commonprefix([w[::-1] for w in words]))
    if any(head + tail >= len(w) for w in words):  # a question that is all template: keep them whole
        return found
    return [replace(q, question=" ".join(w[head : len(w) - tail])) for q, w in zip(found, words, strict=True)]


class _Words:
    """The word splitter given to ``rouge-score`` (its own drops every non-ASCII letter)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())


def rouge_l(reference: str, answer: str) -> float:
    """ROUGE-L F-measure of ``answer`` against ``reference``, from 0 (nothing shared) to 1 (the same)."""
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], tokenizer=_Words()).score(reference, answer)["rougeL"].fmeasure


def mean_rouge_l(references: list[str], answers: list[str]) -> float | None:
    """The mean ROUGE-L of the answers against their references; None when there are none."""
    return mean_score([rouge_l(r, a) for r, a in zip(references, answers, strict=True)])


def mean_score(scores: list[float | None]) -> float | None:
    """The mean of ``scores``; None when there are none or one was not measured."""
    return sum(scores) / len(scores) if scores and None not in scores else None


def repeated_sentences(answer: str) -> list[str]:
    """The sentences (of 4 words or more) that ``answer`` says more than once, in first-seen order."""
    seen: set[str] = set()
    repeated: dict[str, str] = {}
    for sentence in _SENTENCE_END.split(answer):
        words = _Words().tokenize(sentence)
        key = " ".join(words)
        if len(words) >= _MIN_REPEAT_WORDS and key in seen:
            repeated.setdefault(key, sentence.strip())
        seen.add(key)
    return list(repeated.values())
