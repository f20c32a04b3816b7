"""The prompt template behind texts the user formatted, found from the source columns kept beside them."""

from __future__ import annotations

import logging

import pytest

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.text_template import (
    adopt_text_template,
    recognise_prompt_template,
    trained_on_unknown_prompt,
)

EOS = "<|im_end|>"
# The tutorial's prompt: question, chain of thought (its `input` column), answer.
TUTORIAL = (
    "Below is an instruction that describes a task.\n\n### Instruction:\nYou are a medical expert.\n\n"
    "### Question:\n{}\n\n### Response:\n<think>\n{}\n</think>\n{}"
)
ROWS = [
    ("What is a fever?", "Fever means temperature.", "A body temperature above normal."),
    ("What causes anemia?", "", "Low iron is a common cause."),  # an empty chain of thought
    ("How is flu spread?", "Think of droplets.", "Through droplets when people cough."),
]


def _columns(rows, names=("instruction", "input", "output")):
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _texts(prompt, rows, eos=EOS):
    return [prompt.format(*row) + eos for row in rows]


def test_tutorial_texts_give_the_tutorial_prompt_with_the_input_as_reasoning():
    columns = {**_columns(ROWS), "source_id": [1, 2, 3]}  # unknown columns are ignored
    template = recognise_prompt_template(_texts(TUTORIAL, ROWS), columns, EOS)
    assert template.text == (
        "Below is an instruction that describes a task.\n\n### Instruction:\nYou are a medical expert.\n\n"
        "### Question:\n{instruction}\n\n### Response:\n<think>\n{reasoning}\n</think>\n{output}"
    )
    new = "Why do my knees hurt?"
    assert template.prompt(new) == TUTORIAL.format(new, "COT", "").split("COT")[0]


def test_chinese_tag_and_alpaca_input_outside_tags():
    zh = "### 问题：\n{}\n\n### 回答：\n<思考>{}</思考>\n{}"
    assert recognise_prompt_template(_texts(zh, ROWS), _columns(ROWS), EOS).text == (
        "### 问题：\n{instruction}\n\n### 回答：\n<思考>{reasoning}</思考>\n{output}"
    )
    # Alpaca's input is context in the prompt, not something the model writes.
    alpaca = "### Instruction:\n{}\n\n### Input:\n{}\n\n### Response:\n{}"
    assert recognise_prompt_template(_texts(alpaca, ROWS), _columns(ROWS), EOS).text == (
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}"
    )


def test_text_that_varies_between_rows_is_not_a_template():
    texts = [f"Q{i}: {q}\nA: {a}" for i, (q, _, a) in enumerate(ROWS)]
    assert recognise_prompt_template(texts, _columns(ROWS), EOS) is None
    # one row formatted differently spoils it too
    texts = _texts(TUTORIAL, ROWS)
    texts[1] = texts[1].replace("### Response:", "### Answer:")
    assert recognise_prompt_template(texts, _columns(ROWS), EOS) is None


def test_a_column_empty_on_every_row_stays_fixed_text():
    rows = [(q, "", a) for q, _, a in ROWS]
    template = recognise_prompt_template(_texts(TUTORIAL, rows), _columns(rows), EOS)
    assert template.text.endswith(
        "### Question:\n{instruction}\n\n### Response:\n<think>\n\n</think>\n{output}"
    )


def test_repeated_values_and_values_inside_other_text():
    rows = [
        ("Response", "Response", "### Response"),  # values that are also the fixed text
        ("fever", "fever fever", "fever is a high temperature; fever"),  # repeated, and substrings
        ("What is a fever?", "Fever means temperature.", "A body temperature above normal."),
    ]
    template = recognise_prompt_template(_texts(TUTORIAL, rows), _columns(rows), EOS)
    assert template is not None and template.placeholders == ("instruction", "reasoning", "output")
    assert [template.format(q, a, reasoning=c) + EOS for q, c, a in rows] == _texts(TUTORIAL, rows)


def test_ambiguous_or_unservable_texts_are_not_guessed():
    # One row whose question is also a word of the fixed text: two placements explain it equally well.
    one = [("Question", "c", "a")]
    assert recognise_prompt_template(_texts(TUTORIAL, one), _columns(one), EOS) is None
    # Fixed text after the answer cannot be served (the model writes the answer last).
    assert recognise_prompt_template([f"Q: {q}\nA: {a}\n-- end" for q, _, a in ROWS], _columns(ROWS)) is None
    # No answer column: nothing to anchor the template's end.
    assert recognise_prompt_template(_texts(TUTORIAL, ROWS), {"instruction": [r[0] for r in ROWS]}) is None


def test_braces_and_prompt_completion_names():
    texts = [f"{{json}} Q: {q}\nA: {a}" for q, _, a in ROWS]
    columns = {"prompt": [r[0] for r in ROWS], "completion": [r[2] for r in ROWS]}
    template = recognise_prompt_template(texts, columns)
    assert template.text == "{{json}} Q: {instruction}\nA: {output}"
    assert template.prompt("x") == "{json} Q: x\nA: "


# -- declaring it on the tokenizer --------------------------------------------------------------------
def test_recognised_template_is_declared_on_the_tokenizer(tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="tunesmith"):
        template = adopt_text_template(tokenizer, _texts(TUTORIAL, ROWS, tokenizer.eos_token), _columns(ROWS))
    assert PromptTemplate.from_chat_template(tokenizer.chat_template) == template
    assert "Recognised the prompt template" in caplog.text
    question = [{"role": "user", "content": "Why do my knees hurt?"}]
    rendered = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert rendered == TUTORIAL.format("Why do my knees hurt?", "COT", "").split("COT")[0]
    assert not trained_on_unknown_prompt(tokenizer)


def test_a_declared_template_that_differs_is_kept_with_a_warning(tokenizer, caplog):
    declared = PromptTemplate("Q: {instruction}\nA: {output}")
    tokenizer.chat_template = declared.to_chat_template()
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        kept = adopt_text_template(tokenizer, _texts(TUTORIAL, ROWS, tokenizer.eos_token), _columns(ROWS))
    assert kept == declared and PromptTemplate.from_chat_template(tokenizer.chat_template) == declared
    assert "but the tokenizer declares" in caplog.text


def test_texts_rendered_by_the_tokenizers_chat_template_keep_it(tokenizer):
    chatml = tokenizer.chat_template
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False
        )
        for q, _, a in ROWS
    ]
    adopt_text_template(tokenizer, texts, _columns(ROWS))  # recognised, and ChatML renders the same prompt
    assert tokenizer.chat_template == chatml and not trained_on_unknown_prompt(tokenizer)
    adopt_text_template(tokenizer, texts, {})  # no source columns: not recognised, but ChatML was used
    assert not trained_on_unknown_prompt(tokenizer)


@pytest.mark.parametrize("columns", [{}, _columns(ROWS)], ids=["no source columns", "varying text"])
def test_plain_texts_of_unknown_format_mark_the_tokenizer_until_a_prompt_is_declared(tokenizer, columns):
    texts = [f"Q{i}: {q}\nA: {a}" for i, (q, _, a) in enumerate(ROWS)]
    assert adopt_text_template(tokenizer, texts, columns) is None
    assert trained_on_unknown_prompt(tokenizer)
    tokenizer.chat_template = PromptTemplate("Q: {instruction}\nA: {output}").to_chat_template()
    assert not trained_on_unknown_prompt(tokenizer)
