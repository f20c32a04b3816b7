"""Ollama TEMPLATEs render the training prompt format in Go exactly as the Jinja chat template does: the
embedded model's own template, every family tunesmith trains with, and declared prompt templates."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.data.chat_templates import get_chat_template
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.export.ollama import modelfile_text, plan_modelfile

SYSTEM = {"role": "system", "content": "You are a careful doctor. Answer briefly."}
USER = {"role": "user", "content": 'My head hurts after "long" days {at work}.\nWhat helps?'}
ASSISTANT = {"role": "assistant", "content": "Rest, water and short breaks.\n\nSee a doctor if it lasts."}
CONVERSATIONS = {
    "system+user": [SYSTEM, USER],
    "system+user+assistant": [SYSTEM, USER, ASSISTANT],
    "history": [SYSTEM, USER, ASSISTANT, {"role": "user", "content": "And at night?"}],
    "no system": [USER],
}
# The tutorial's prompt (positional fields: question, reasoning, answer) and a named Alpaca-style one.
TUTORIAL_PROMPT = (
    "以下是描述任务的指令。请写出恰当完成该请求的回答。\n\n### Instruction:\n你是一位医学专家。\n\n"
    "### Question:\n{}\n\n### Response:\n<think>\n{}\n</think>\n{}"
)
ALPACA_PROMPT = "Below is an instruction.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}"


def _jinja(tokenizer, chat_template, messages):
    last_is_assistant = messages[-1]["role"] == "assistant"
    return tokenizer.apply_chat_template(
        messages,
        chat_template=chat_template,
        tokenize=False,
        add_generation_prompt=not last_is_assistant,
        continue_final_message=last_is_assistant,
    )


def _assert_go_matches(go_render, tokenizer, plan, chat_template):
    for label, messages in CONVERSATIONS.items():
        expected = _jinja(tokenizer, chat_template, messages)
        got = plan.pieces.bos_text + go_render(plan.template, messages)
        assert got == expected, label


def test_embedded_models_own_template(go_render, tokenizer):
    plan = plan_modelfile(tokenizer)
    assert "chatml" in plan.source and plan.stops == ("<|im_end|>", "<|im_start|>")
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_every_training_family(go_render, tokenizer, family):
    tokenizer = get_chat_template(AutoTokenizer.from_pretrained(tokenizer.name_or_path), family)
    plan = plan_modelfile(tokenizer)
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)
    assert tokenizer.eos_token in plan.stops


@pytest.mark.parametrize("prompt", [TUTORIAL_PROMPT, ALPACA_PROMPT], ids=["tutorial", "alpaca"])
def test_declared_prompt_template_travelling_in_the_tokenizer(go_render, tokenizer, prompt):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    template = PromptTemplate(prompt)
    tokenizer.chat_template = template.to_chat_template()
    plan = plan_modelfile(tokenizer)
    assert plan.source.startswith("the training prompt template")
    _assert_go_matches(go_render, tokenizer, plan, tokenizer.chat_template)
    # What Ollama sends for one question is exactly the training prompt (the model then writes the rest).
    question = {"role": "user", "content": "我头疼怎么办？"}
    assert go_render(plan.template, [question]) == template.prompt("我头疼怎么办？")


def test_modelfile_text_is_what_ollama_reads(tokenizer):
    text = modelfile_text("m.Q8_0.gguf", plan_modelfile(tokenizer), 2048)
    lines = text.splitlines()
    assert "FROM ./m.Q8_0.gguf" in lines and "PARAMETER num_ctx 2048" in lines
    assert text.count('TEMPLATE """') == 1 and text.rstrip().endswith("PARAMETER num_ctx 2048")


def test_template_of_another_shape_is_refused_clearly(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    # Puts the turn count into the text: no fixed text around each message can reproduce that.
    tokenizer.chat_template = "{% for m in messages %}[{{ loop.index }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(TunesmithError, match="cannot translate.*prompt_template="):
        plan_modelfile(tokenizer)
