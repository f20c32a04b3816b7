"""Response-only loss: exactly the answer tokens keep their labels, checked token by token."""

from __future__ import annotations

import datasets
import pytest

from tunesmith.constants import IGNORE_INDEX
from tunesmith.data import prepare_dataset, train_on_responses_only
from tunesmith.errors import TunesmithError


def _expected(tokenizer, segments):
    """Labels built segment by segment: (text, is_answer) pieces tokenized separately, then joined."""
    ids, labels = [], []
    for text, is_answer in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
    return ids, labels


def _chatml_segments():
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a fever?<|im_end|>\n<|im_start|>assistant\n"
    answer1 = "A body temperature above normal.<|im_end|>\n"
    turn2 = "<|im_start|>user\nIs it dangerous?<|im_end|>\n<|im_start|>assistant\n"
    answer2 = "Rarely, if it is mild.<|im_end|>\n"
    return [(head, False), (answer1, True), (turn2, False), (answer2, True)]


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a fever?"},
    {"role": "assistant", "content": "A body temperature above normal."},
    {"role": "user", "content": "Is it dangerous?"},
    {"role": "assistant", "content": "Rarely, if it is mild."},
]


def test_prepare_dataset_labels_exactly_the_answer_tokens(tokenizer):
    data = prepare_dataset([{"messages": MESSAGES}], tokenizer, max_seq_length=256)
    ids, labels = _expected(tokenizer, _chatml_segments())
    assert data.train[0]["input_ids"] == ids
    assert data.train[0]["labels"] == labels


def test_train_on_responses_only_masks_exactly_the_prompt_tokens(tokenizer):
    text = "".join(t for t, _ in _chatml_segments())
    masked = train_on_responses_only(datasets.Dataset.from_dict({"text": [text]}), tokenizer=tokenizer)
    ids, labels = _expected(tokenizer, _chatml_segments())
    assert masked[0]["input_ids"] == ids
    for position, (got, want) in enumerate(zip(masked[0]["labels"], labels, strict=True)):
        assert got == want, f"token {position} ({tokenizer.decode([ids[position]])!r})"


def test_single_turn_prompt_template_rows_mask_the_prompt(tokenizer):
    from tunesmith.data import PromptTemplate

    template = PromptTemplate("### Question:\n{instruction}\n\n### Answer:\n{output}")
    data = prepare_dataset(
        [{"instruction": "What is a fever?", "output": "A high temperature."}],
        tokenizer,
        template=template,
        max_seq_length=64,
    )
    row = data.train[0]
    answer = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    prompt = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == IGNORE_INDEX]
    assert tokenizer.decode(answer) == "A high temperature." + tokenizer.eos_token
    assert tokenizer.decode(prompt) == "### Question:\nWhat is a fever?\n\n### Answer:\n"


def test_every_label_masked_is_a_loud_error_naming_the_marker(tokenizer):
    data = datasets.Dataset.from_dict({"text": ["Question: hi\nAnswer: hello"] * 3})
    with pytest.raises(TunesmithError) as err:
        train_on_responses_only(
            data, tokenizer=tokenizer, instruction_part="Question:", response_part="### Response:"
        )
    assert "masked every label" in str(err.value) and "'### Response:'" in str(err.value)


def test_trainer_form_replaces_the_trainers_labels(tokenizer, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.training import SFTTrainer, TrainingArguments

    text = "".join(t for t, _ in _chatml_segments())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=datasets.Dataset.from_dict({"text": [text] * 2}),
        args=TrainingArguments(output_dir=str(tmp_path), max_steps=1, max_length=128),
    )
    assert all(
        label != IGNORE_INDEX for label in trainer.train_dataset[0]["labels"][1:]
    )  # plain text: every token
    train_on_responses_only(trainer)
    ids, labels = _expected(tokenizer, _chatml_segments())
    assert trainer.train_dataset[0]["labels"] == labels
