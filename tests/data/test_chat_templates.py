"""Chat template families: set them on a tokenizer, and recognise them from any template text."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from tunesmith.data import PromptTemplate, get_chat_template, template_family
from tunesmith.data.chat_template_table import CHAT_FAMILIES
from tunesmith.errors import TunesmithError

CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


@pytest.mark.parametrize("name", ["chatml", "llama-3", "qwen-2.5", "mistral", "alpaca"])
def test_each_family_renders_and_is_recognised(tokenizer, name):
    get_chat_template(tokenizer, name)
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    family = CHAT_FAMILIES[name]
    assert re.search(re.escape(family.instruction_part) + r" ?Hi\?", text)
    assert re.search(re.escape(family.response_part) + r" ?Hello\.", text)
    assert template_family(tokenizer) == name
    assert template_family(family.template) == name


def test_chatml_ends_turns_with_the_eos_token(tokenizer):
    get_chat_template(tokenizer, "chatml")
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=False)
    assert text.endswith("Hello.<|im_end|>\n")


def test_generation_prompt_opens_the_assistant_turn(tokenizer):
    get_chat_template(tokenizer, "llama-3")
    prompt = tokenizer.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_real_tokenizers_own_templates_are_recognised(tokenizer, shared_dir):
    assert template_family(tokenizer) == "chatml"  # SmolLM2's own template (with its default system prompt)
    llama3 = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / "llama3")
    assert template_family(llama3) == "llama-3"
    llama31 = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / "llama3_1")
    assert template_family(llama31) == "llama-3"


def test_prompt_template_and_unknown_templates_are_not_a_family(tokenizer):
    made = PromptTemplate("Q: {instruction}\nA: {output}").to_chat_template()
    assert template_family(made) is None
    assert template_family("{{ messages[0]['content'] }}") is None
    assert template_family(None) is None


def test_unknown_name_suggests_the_closest_and_own_needs_a_template(tokenizer):
    with pytest.raises(TunesmithError, match="did you mean 'chatml'"):
        get_chat_template(tokenizer, "chatmel")
    assert get_chat_template(tokenizer, "own") is tokenizer
    tokenizer.chat_template = None
    with pytest.raises(TunesmithError, match="no chat template of its own"):
        get_chat_template(tokenizer, "own")


def test_system_message_replaces_the_default(tokenizer):
    get_chat_template(tokenizer, "chatml", system_message="You are a careful doctor.")
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a careful doctor.<|im_end|>\n")
