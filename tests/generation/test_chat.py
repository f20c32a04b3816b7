"""``chat``: the model's own template with the generation prompt, streamed tokens, greedy by default."""

from __future__ import annotations

import io

import pytest
from transformers import AutoTokenizer

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.generation.chat import build_prompt, chat, prompt_ids
from tunesmith.models.loader import load


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir)


def test_default_model_answers_in_its_chat_template(default_model_path):
    model, tokenizer = load("smollm2-135m-instruct")
    streamed = io.StringIO()
    answer = chat(model, tokenizer, "What are common causes of fatigue?", max_new_tokens=8, stream=streamed)
    assert answer.startswith("Fatigue is a complex condition")
    assert streamed.getvalue().strip() == answer


def test_prompt_ends_with_the_assistant_turn_and_keeps_the_system_message(default_model_path):
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    text = build_prompt(
        tokenizer, [{"role": "system", "content": "You are a doctor."}, {"role": "user", "content": "Hi"}]
    )
    assert text.startswith("<|im_start|>system\nYou are a doctor.<|im_end|>")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_is_repeatable_and_training_mode_survives(tiny):
    model, tokenizer = tiny
    model.train()
    first = chat(model, tokenizer, "hello there", max_new_tokens=6, stream=False)
    second = chat(model, tokenizer, "hello there", max_new_tokens=6, stream=False)
    assert first == second
    assert model.training, "chat must give the model back in the mode it found it"


def test_prompt_template_tokenizer_is_prompted_like_training(tiny, tiny_llama_dir):
    model, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    template = PromptTemplate("### Question:\n{instruction}\n\n### Answer:\n{output}")
    tokenizer.chat_template = template.to_chat_template()
    assert (
        build_prompt(tokenizer, "Why?") == "### Question:\nWhy?\n\n### Answer:\n" == template.prompt("Why?")
    )
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert build_prompt(tokenizer, history) == template.format(
        "a", "b"
    ) + tokenizer.eos_token + template.prompt("c")
    ids = prompt_ids(tokenizer, "Why?")[0].tolist()
    assert tokenizer.decode(ids) == template.prompt("Why?")
    assert isinstance(chat(model, tokenizer, "Why?", max_new_tokens=3, stream=False), str)


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "assistant", "content": "hi"}], "last chat message must come from the user"),
        ([{"role": "robot", "content": "hi"}], "role of 'system', 'user' or 'assistant'"),
        ([{"role": "user", "content": 3}], "text 'content'"),
    ],
)
def test_malformed_messages(tiny, messages, match):
    model, tokenizer = tiny
    with pytest.raises(TunesmithError, match=match):
        chat(model, tokenizer, messages, stream=False)


def test_bad_generation_settings(tiny):
    model, tokenizer = tiny
    with pytest.raises(TunesmithError, match="max_new_tokens=0"):
        chat(model, tokenizer, "hi", max_new_tokens=0)
    with pytest.raises(TunesmithError, match="temperature=-1"):
        chat(model, tokenizer, "hi", temperature=-1)
