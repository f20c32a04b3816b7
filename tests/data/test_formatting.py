"""Formatting rows: every layout becomes one training text that ends in exactly one EOS token."""

from __future__ import annotations

import pytest

from tunesmith.data import prepare_dataset, standardize_sharegpt
from tunesmith.data.formatting import add_eos_once
from tunesmith.errors import TunesmithError

QA = {"q": "What is a fever?", "a": "A body temperature above normal."}


def _rows(layout):
    return {
        "alpaca": [{"instruction": QA["q"], "input": "", "output": QA["a"]}],
        "sharegpt": [
            {"conversations": [{"from": "human", "value": QA["q"]}, {"from": "gpt", "value": QA["a"]}]}
        ],
        "messages": [
            {"messages": [{"role": "user", "content": QA["q"]}, {"role": "assistant", "content": QA["a"]}]}
        ],
        "prompt_completion": [{"prompt": f"Q: {QA['q']}\nA: ", "completion": QA["a"]}],
        "text": [{"text": f"Q: {QA['q']}\nA: {QA['a']}"}],
    }[layout]


@pytest.mark.parametrize("layout", ["alpaca", "sharegpt", "messages", "prompt_completion", "text"])
def test_each_layout_is_recognised_and_ends_with_one_eos(tokenizer, layout):
    data = prepare_dataset(_rows(layout), tokenizer, max_seq_length=128)
    assert data.stats.layout == layout
    ids = data.train[0]["input_ids"]
    # Plain text gets one EOS; a ChatML chat ends each of its 3 turns (default system, user, answer) with it.
    assert ids.count(tokenizer.eos_token_id) == (1 if layout in ("prompt_completion", "text") else 3)
    assert ids[-2:].count(tokenizer.eos_token_id) == 1  # EOS at the end (ChatML puts a newline after it)
    assert QA["a"] in data.train[0]["text"]


def test_eos_already_in_the_text_is_not_doubled(tokenizer):
    eos = tokenizer.eos_token
    data = prepare_dataset(
        [{"text": f"Q: hi\nA: hello{eos}"}, {"text": "Q: yo\nA: hey"}], tokenizer, max_seq_length=64
    )
    for row in data.train:
        assert row["text"].count(eos) == 1 and row["text"].endswith(eos)
        assert row["input_ids"].count(tokenizer.eos_token_id) == 1
    assert add_eos_once("x</s>\n", "</s>") == "x</s>\n"


def test_chat_rows_use_the_tokenizers_template_and_its_end_of_turn(tokenizer):
    data = prepare_dataset(_rows("messages"), tokenizer, max_seq_length=128)
    text = data.train[0]["text"]
    assert (
        text.endswith(f"{QA['a']}<|im_end|>\n") and text.count("<|im_end|>") == 3
    )  # system, user, assistant


def test_alpaca_input_joins_the_question_when_the_template_has_no_input(tokenizer):
    from tunesmith.data import PromptTemplate

    rows = [{"instruction": "Summarise.", "input": "Fever is common.", "output": "Common."}]
    data = prepare_dataset(rows, tokenizer, template=PromptTemplate("Q: {instruction}\nA: {output}"))
    assert data.train[0]["text"].startswith("Q: Summarise.\n\nFever is common.\nA: Common.")


def test_standardize_sharegpt_and_unknown_speaker(tokenizer):
    import datasets

    data = standardize_sharegpt(datasets.Dataset.from_list(_rows("sharegpt")))
    assert data[0]["messages"] == _rows("messages")[0]["messages"]
    doctor = datasets.Dataset.from_list([{"conversations": [{"from": "patient", "value": "hi"}]}])
    with pytest.raises(TunesmithError, match="row 1, turn 1: unknown speaker from='patient'"):
        standardize_sharegpt(doctor)
    assert standardize_sharegpt(doctor, aliases={"patient": "user"})[0]["messages"][0]["role"] == "user"


def test_conversation_without_a_chat_template_asks_for_one(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(TunesmithError, match="template='chatml'"):
        prepare_dataset(_rows("messages"), tokenizer)
    data = prepare_dataset(_rows("messages"), tokenizer, template="llama-3", max_seq_length=128)
    assert "<|start_header_id|>assistant<|end_header_id|>" in data.train[0]["text"]
