"""Held-out questions come out of real prepared rows; ROUGE-L and repeated sentences score answers as a
reader would, in English and in Chinese."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data import prepare_dataset
from tunesmith.models.loader import load_tokenizer
from tunesmith.recipe.quality import held_out_questions, mean_rouge_l, repeated_sentences, rouge_l

DATA = Path(__file__).parents[2] / "tunesmith" / "assets" / "data" / "medquad_en.jsonl"


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    return load_tokenizer("smollm2-135m-instruct")


def _rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines()[:40]]


def test_each_held_out_row_splits_into_its_question_and_its_own_answer(tokenizer) -> None:
    prepared = prepare_dataset(str(DATA), tokenizer, limit=40, eval_split=0.25, max_seq_length=512)
    sample = held_out_questions(prepared.eval, tokenizer, limit=4)
    assert len(sample) == 4
    rows = {row["instruction"]: " ".join(row["output"].split()) for row in _rows()}
    for item in sample:
        # the question alone, without the system prompt and the role markers (a "?" all of them end with
        # goes with the shared words)
        asked = [q for q in rows if " ".join(q.split()).startswith(item.question)]
        assert len(asked) == 1 and len(item.question) > 0.8 * len(asked[0]), item.question
        assert "assistant" not in item.question and "SmolLM" not in item.question
        assert rows[asked[0]].startswith(" ".join(item.reference.split())[:80])
        assert tokenizer.decode(item.prompt_ids).endswith("assistant\n"), (
            "the prompt ends where the answer starts"
        )


def test_rows_trained_on_as_a_whole_have_no_question_to_ask(tokenizer) -> None:
    prepared = prepare_dataset(
        str(DATA), tokenizer, limit=40, eval_split=0.25, max_seq_length=512, responses_only=False
    )
    assert held_out_questions(prepared.eval, tokenizer, limit=4) == []
    assert held_out_questions(None, tokenizer, limit=4) == []


def test_rouge_l_rewards_the_reference_words_in_order_in_english_and_chinese() -> None:
    reference = "Anemia is a condition in which the blood has fewer red blood cells than normal."
    assert rouge_l(reference, reference) == 1.0
    close = rouge_l(reference, "Anemia is when the blood has fewer red cells than normal.")
    far = rouge_l(reference, "Take a walk every day and drink water.")
    assert 0.6 < close < 1.0 and far < 0.1
    # rouge-score's own splitter drops every Chinese character: a Chinese answer would always score 0
    assert rouge_l("贫血是血液中红细胞减少", "贫血是红细胞减少") > 0.7
    assert mean_rouge_l([reference, reference], [reference, "no"]) == pytest.approx(0.5, abs=0.01)
    assert mean_rouge_l([], []) is None


def test_an_answer_that_says_a_sentence_twice_is_caught() -> None:
    looping = (
        "Common causes of fatigue include:\n- Lack of sleep and poor rest\n- Anemia\n"
        "- Lack of sleep and poor rest\nSee a doctor. See a doctor."
    )
    assert repeated_sentences(looping) == ["- Lack of sleep and poor rest"]
    assert repeated_sentences("Rest well. Eat well. Drink water.") == []
    assert repeated_sentences("多喝水可以缓解疲劳。多喝水可以缓解疲劳。") == ["多喝水可以缓解疲劳"]
