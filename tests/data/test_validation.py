"""Bad input is refused before training, with the file, the row number and the field in the message."""

from __future__ import annotations

import pytest

from tunesmith.data import PromptTemplate, prepare_dataset
from tunesmith.errors import TunesmithError

TEMPLATE = PromptTemplate("Question: {instruction}\nAnswer: {output}")


def _prepare(path, tokenizer, **kw):
    kw.setdefault("template", TEMPLATE)
    kw.setdefault("max_seq_length", 256)
    return prepare_dataset(path, tokenizer, **kw)


def test_misspelled_field_suggests_the_right_name(write_jsonl, tokenizer):
    path = write_jsonl([{"instrction": "q", "output": "a"}])
    with pytest.raises(TunesmithError) as err:
        _prepare(path, tokenizer)
    assert "column 'instrction' looks like 'instruction'" in str(err.value)
    assert str(path) in str(err.value)


def test_fields_mapping_to_a_missing_column_suggests_the_closest(write_jsonl, tokenizer):
    path = write_jsonl([{"Question": "q", "Response": "a"}])
    with pytest.raises(TunesmithError, match="did you mean 'Response'"):
        _prepare(path, tokenizer, fields={"instruction": "Question", "output": "Respnse"})
    data = _prepare(path, tokenizer, fields={"instruction": "Question", "output": "Response"})
    assert data.train[0]["text"].startswith("Question: q\nAnswer: a")


def test_missing_value_wrong_type_and_empty_answer_name_row_and_field(write_jsonl, tokenizer, alpaca_rows):
    cases = [
        ({"instruction": None, "output": "a"}, "row 3, field 'instruction' is missing"),
        ({"instruction": "q", "output": 42}, "row 3, field 'output' is a int"),
        ({"instruction": "q", "output": "   "}, "row 3, field 'output' is empty"),
    ]
    for bad, expected in cases:
        rows = [{"instruction": r["instruction"], "output": r["output"]} for r in alpaca_rows[:2]] + [bad]
        path = write_jsonl(rows, name="bad.jsonl")
        with pytest.raises(TunesmithError) as err:
            _prepare(path, tokenizer)
        assert expected in str(err.value) and "bad.jsonl" in str(err.value), str(err.value)


def test_conversation_without_answer_is_refused(write_jsonl, tokenizer):
    path = write_jsonl([{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(TunesmithError, match="row 1, field 'messages' has no assistant message"):
        prepare_dataset(path, tokenizer)


def test_template_placeholder_the_data_lacks(write_jsonl, tokenizer):
    path = write_jsonl([{"instruction": "q", "output": "a", "Complex_CoT": "think"}])
    template = PromptTemplate("Q: {instruction}\n<think>{reasoning}</think>\nA: {output}")
    with pytest.raises(TunesmithError) as err:
        _prepare(path, tokenizer, template=template)
    assert "uses {reasoning}" in str(err.value) and "no 'reasoning' column" in str(err.value)
    data = _prepare(path, tokenizer, template=template, fields={"reasoning": "Complex_CoT"})
    assert "<think>think</think>" in data.train[0]["text"]


def test_empty_dataset_is_refused(tokenizer):
    import datasets

    empty = datasets.Dataset.from_dict({"instruction": [], "output": []})
    with pytest.raises(TunesmithError, match="empty: there are no rows"):
        _prepare(empty, tokenizer)


def test_duplicates_are_counted_and_dropped_kept_or_refused(write_jsonl, tokenizer, alpaca_rows):
    path = write_jsonl(alpaca_rows + [alpaca_rows[0], alpaca_rows[0], alpaca_rows[1]])
    dropped = _prepare(path, tokenizer)
    assert (dropped.stats.duplicates, dropped.stats.rows, dropped.stats.duplicates_dropped) == (3, 3, True)
    kept = _prepare(path, tokenizer, duplicates="keep")
    assert (kept.stats.duplicates, kept.stats.rows) == (3, 6)
    with pytest.raises(TunesmithError, match="3 exact duplicate rows \\(first: row 4\\)"):
        _prepare(path, tokenizer, duplicates="error")


def test_rows_longer_than_max_seq_length_are_counted_or_refused(write_jsonl, tokenizer, alpaca_rows):
    long_answer = " ".join(["The heart pumps blood."] * 60)
    path = write_jsonl(
        alpaca_rows + [{"instruction": "Explain the heart.", "input": "", "output": long_answer}]
    )
    truncated = _prepare(path, tokenizer, max_seq_length=64)
    assert truncated.stats.truncated == 1 and truncated.stats.max_tokens > 64
    assert max(len(ids) for ids in truncated.train["input_ids"]) == 64
    with pytest.raises(TunesmithError) as err:
        _prepare(path, tokenizer, max_seq_length=64, on_too_long="error")
    assert "row 4 is" in str(err.value) and "max_seq_length=64" in str(err.value)


def test_answer_cut_off_entirely_is_dropped_and_counted(write_jsonl, tokenizer, alpaca_rows):
    long_question = "Tell me about this. " * 40
    path = write_jsonl(alpaca_rows + [{"instruction": long_question, "input": "", "output": "Fine."}])
    data = _prepare(path, tokenizer, max_seq_length=48)
    assert data.stats.dropped_no_answer == 1 and data.stats.rows == 3


def test_every_answer_beyond_the_limit_is_a_loud_error(write_jsonl, tokenizer):
    path = write_jsonl([{"instruction": "Tell me about this. " * 40, "output": "Fine."}])
    with pytest.raises(TunesmithError, match="every label is masked.*beyond max_seq_length"):
        _prepare(path, tokenizer, max_seq_length=32)


def test_eval_split_fraction_and_file(write_jsonl, tokenizer):
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]
    path = write_jsonl(rows)
    split = _prepare(path, tokenizer, eval_split=0.25)
    assert (split.stats.rows, split.stats.eval_rows) == (15, 5)
    assert not set(split.train["text"]) & set(split.eval["text"])
    held = write_jsonl(rows[:4], name="held.jsonl")
    from_file = _prepare(path, tokenizer, eval_split=str(held))
    assert from_file.stats.eval_rows == 4
    with pytest.raises(TunesmithError, match="eval_split=2.0"):
        _prepare(path, tokenizer, eval_split=2.0)
