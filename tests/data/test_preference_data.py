"""Preference pairs and GRPO prompts: both layouts (text, messages), formatted exactly as SFT formats a row,
and every bad row refused with its row number and field."""

from __future__ import annotations

import json

import pytest

from tunesmith.data import PromptTemplate, prepare_dataset
from tunesmith.data.preference import prepare_preference_dataset, prepare_prompt_dataset
from tunesmith.errors import TunesmithError

PAIRS = [
    {"prompt": f"Why is sky {i} blue?", "chosen": f"Light scatters {i}.", "rejected": "No idea."}
    for i in range(6)
]


def test_text_pairs_are_formatted_as_the_sft_row_would_be(chatml_bpe_tokenizer):
    tokenizer = chatml_bpe_tokenizer
    pairs = prepare_preference_dataset(PAIRS, tokenizer).train
    sft = prepare_dataset(
        [{"instruction": p["prompt"], "output": p["chosen"]} for p in PAIRS], tokenizer
    ).train
    assert (
        pairs[0]["prompt"] + pairs[0]["chosen"] == sft[0]["text"].rstrip()
    )  # the same text, cut at the answer
    assert pairs[0]["prompt"].endswith("<|im_start|>assistant\n") and pairs[0]["chosen"].endswith(
        "<|im_end|>"
    )
    assert pairs[0]["rejected"] == "No idea.<|im_end|>"


def test_conversation_pairs_and_a_prompt_template(chatml_bpe_tokenizer):
    tokenizer = chatml_bpe_tokenizer
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"}],
             "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go away."}]} for i in range(3)]  # fmt: skip
    data = prepare_preference_dataset(rows, tokenizer)
    assert data.stats.layout == "preference (conversations)" and data.stats.rows == 3
    assert "Be brief." in data.train[0]["prompt"] and data.train[0]["chosen"] == "Hello.<|im_end|>"
    template = PromptTemplate("Q: {instruction}\nA: {output}")
    pairs = prepare_preference_dataset(PAIRS, tokenizer, template=template).train
    assert (
        pairs[0]["prompt"] == "Q: Why is sky 0 blue?\nA: "
        and pairs[0]["chosen"] == "Light scatters 0.<|im_end|>"
    )
    prompts = prepare_prompt_dataset([{"question": "2+2?", "answer": "4"}], tokenizer, template=template,
                                     fields={"prompt": "question"}).train  # fmt: skip
    assert prompts[0]["prompt"] == "Q: 2+2?\nA: " and prompts[0]["answer"] == "4"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"rejected": None}, "row 3, field 'rejected' is missing"),
        ({"chosen": "  "}, "row 3, field 'chosen' is empty"),
        ({"rejected": 7}, "row 3, field 'rejected' is a int"),
        ({"rejected": "Light scatters 2."}, "row 3: 'chosen' and 'rejected' are identical"),
        ({"rejected": [{"role": "assistant", "content": "x"}]}, "row 3, field 'rejected' is a list"),
    ],
)
def test_bad_rows_are_refused_with_row_and_field(chatml_bpe_tokenizer, tmp_path, change, expected):
    rows = [dict(r) for r in PAIRS]
    rows[2].update(change)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(TunesmithError, match=f"{path}, " + expected.replace("(", r"\(")):
        prepare_preference_dataset(path, chatml_bpe_tokenizer)


def test_a_missing_column_names_the_fix(chatml_bpe_tokenizer):
    with pytest.raises(TunesmithError, match=r"no 'rejected' column.*fields=\{'rejected'"):
        prepare_preference_dataset([{"prompt": "q", "chosen": "a"}], chatml_bpe_tokenizer)
    with pytest.raises(TunesmithError, match=r"no 'chosen' column.*rename column 'chosn'"):
        prepare_preference_dataset([{"prompt": "q", "chosn": "a", "rejected": "b"}], chatml_bpe_tokenizer)


def test_bad_conversations_are_refused(chatml_bpe_tokenizer):
    def rows(**change):
        good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}]}  # fmt: skip
        return [good, {**good, **change}]

    answer = [{"role": "assistant", "content": "a"}]
    with pytest.raises(TunesmithError, match="row 2, field 'prompt' ends with an assistant message"):
        prepare_preference_dataset(
            rows(prompt=[{"role": "user", "content": "q"}, *answer]), chatml_bpe_tokenizer
        )
    with pytest.raises(TunesmithError, match="row 2, field 'chosen' must end with a non-empty assistant"):
        prepare_preference_dataset(rows(chosen=[{"role": "user", "content": "x"}]), chatml_bpe_tokenizer)
    with pytest.raises(TunesmithError, match="row 2: 'chosen' and 'rejected' are identical"):
        prepare_preference_dataset(rows(rejected=answer), chatml_bpe_tokenizer)


def test_pairs_the_same_once_cut_to_max_length_are_dropped_and_the_report_counts_them(chatml_bpe_tokenizer):
    """A rejected answer that is the chosen one cut short (as half of the shipped pairs are) agrees with it
    token for token as far as max_length reaches: TRL would train on two equal sequences."""
    tokenizer = chatml_bpe_tokenizer
    answer = "Rest, fluids and a doctor's visit if the fever lasts more than three days or rises very high."
    pairs = [
        {"prompt": "What helps a fever?", "chosen": answer, "rejected": answer[:40]},
        {"prompt": "What helps a cough?", "chosen": "Honey and warm drinks.", "rejected": "Nothing helps."},
    ]
    first = prepare_preference_dataset(pairs, tokenizer).train[0]
    prompt, chosen, rejected = (tokenizer(first[k], add_special_tokens=False)["input_ids"]
                                for k in ("prompt", "chosen", "rejected"))  # fmt: skip
    shared = next(i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
    cut = prepare_preference_dataset(pairs, tokenizer, max_length=len(prompt) + shared)
    assert cut.stats.rows == 1 and cut.stats.dropped_same_pair == 1 and "cough" in cut.train[0]["prompt"]
    assert "1 pairs dropped (chosen = rejected within max_seq_length)" in cut.stats.summary()
    kept = prepare_preference_dataset(pairs, tokenizer, max_length=len(prompt) + shared + 1)
    assert kept.stats.rows == 2 and kept.stats.dropped_same_pair == 0
    ends = prepare_preference_dataset(
        pairs, tokenizer, max_length=len(prompt) + shared, truncation_mode="keep_end"
    )
    assert ends.stats.rows == 2, "keeping the ends, the two answers differ"
    with pytest.raises(TunesmithError, match=r"max_length=\d+ .*Raise max_length"):
        prepare_preference_dataset(pairs[:1], tokenizer, max_length=len(prompt) + shared)
