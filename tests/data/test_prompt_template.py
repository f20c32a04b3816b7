"""PromptTemplate: one declaration used for training text, the chat template (inference) and export."""

from __future__ import annotations

import pytest

from tunesmith.data import PromptTemplate
from tunesmith.errors import TunesmithError

ZH = "以下是一个医学问题。\n\n### 问题:\n{instruction}\n\n### 回答:\n<思考>{reasoning}</思考>\n{output}"


def test_prompt_and_completion_split_at_the_reasoning():
    template = PromptTemplate(ZH)
    # The model is given the opening reasoning tag and writes the reasoning, the closing tag and the answer.
    assert (
        template.prompt("发烧怎么办？")
        == "以下是一个医学问题。\n\n### 问题:\n发烧怎么办？\n\n### 回答:\n<思考>"
    )
    assert template.completion("多喝水。", reasoning="先看体温") == "先看体温</思考>\n多喝水。"
    assert template.format("q", "a", reasoning="r") == template.prompt("q") + template.completion("a", "r")


def test_tutorial_positional_fields_are_named():
    assert PromptTemplate("Q: {}\nThink: {}\nA: {}").placeholders == ("instruction", "reasoning", "output")
    assert PromptTemplate("Q: {}\nA: {}").placeholders == ("instruction", "output")
    with pytest.raises(TunesmithError, match="4 empty"):
        PromptTemplate("{} {} {} {}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Q: {question}\nA: {output}", "{question}, which tunesmith does not know"),
        ("Q: {instruction}\n", "{output} exactly once"),
        ("A: {output}\nQ: {instruction}", "must end with {output}"),
        ("{reasoning} Q: {instruction} A: {output}", "{reasoning} must come after {instruction}"),
        ("Q: {instruction A: {output}", "not valid format text"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(text, message):
    with pytest.raises(TunesmithError, match=message.replace("{", r"\{").replace("}", r"\}")):
        PromptTemplate(text)


def test_chat_template_renders_exactly_like_the_prompt(tokenizer):
    template = PromptTemplate(ZH)
    tokenizer.chat_template = template.to_chat_template()
    question = [{"role": "user", "content": "发烧怎么办？"}]
    rendered = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert rendered == template.prompt("发烧怎么办？")
    answer = "先看体温</思考>\n多喝水。"
    full = tokenizer.apply_chat_template(
        question + [{"role": "assistant", "content": answer}], tokenize=False
    )
    assert full == template.prompt("发烧怎么办？") + answer + tokenizer.eos_token


def test_the_template_travels_inside_the_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    template = PromptTemplate("Question: {instruction}\nInput: {input}\nAnswer: {output}")
    tokenizer.chat_template = template.to_chat_template()
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert PromptTemplate.from_chat_template(again.chat_template) == template
    assert PromptTemplate.from_chat_template("{{ messages }}") is None
    assert PromptTemplate.from_chat_template(None) is None


def test_literal_braces_survive(tokenizer):
    template = PromptTemplate('JSON {{"q": "{instruction}"}}\n{output}')
    assert template.prompt("hi") == 'JSON {"q": "hi"}\n'
    tokenizer.chat_template = template.to_chat_template()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == template.prompt("hi")
