"""GRPO on the embedded model: the format reward rises; broken reward functions are refused before any
generation, naming the function and the data row; the built-in rewards score what they say."""

from __future__ import annotations

import json

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.training.rewards import exact_match_reward, format_reward, length_penalty

# A one-shot chat prompt: the model sees one answer in the <think>...</think> format before the question.
ONE_SHOT = (
    "<|im_start|>system\nReply as: <think>your thought</think> your answer.<|im_end|>\n"
    "<|im_start|>user\nWhat is a fever?<|im_end|>\n<|im_start|>assistant\n<think>A high body temperature."
    "</think> A fever is a body temperature above 38 C.<|im_end|>\n"
    "<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n{output}"
)
ROWS = [
    {"prompt": "What is 2 + 3?", "answer": "5"},
    {"prompt": "Which is a fruit? A) stone B) apple", "answer": "B"},
]


def test_builtin_rewards_score_format_answer_and_length():
    prompts = ["q"] * 4
    completions = ["<think>a</think> 5", "<think>a</think>", "<think>a", "5"]
    assert format_reward(prompts, completions) == [1.0, 0.5, 0.25, 0.0]
    assert format_reward(["... assistant\n<think>"], ["hm</think> yes"]) == [1.0]  # the prompt opened it
    exact = exact_match_reward("answer")
    assert exact(["q"] * 3, ["<think>2+3</think> It is 5.", "The answer is B)", "7"], answer=["5", "B", "5"]) == [
        1.0, 1.0, 0.0,
    ]  # fmt: skip
    length = length_penalty(max_tokens=4, weight=1.0)
    assert length(["q"] * 3, ["", "", ""], completion_ids=[[1] * 3, [1] * 6, [1] * 20]) == [0.0, -0.5, -1.0]


def _trainer(smollm, tmp_path, rewards, **options):
    from tunesmith import GRPOConfig, GRPOTrainer
    from tunesmith.training import get_peft_model

    model, tokenizer = smollm
    if not hasattr(model, "peft_config"):  # a test may build a second trainer on the same model
        model = get_peft_model(model, r=8, lora_alpha=16, random_state=3407, use_gradient_checkpointing=False)
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, logging_steps=1,
        save_steps=100, seed=3407, bf16=False, beta=0.0, warmup_steps=0, **options,
    )  # fmt: skip
    return GRPOTrainer(model=model, tokenizer=tokenizer, reward_funcs=rewards, train_dataset=ROWS, args=args)


def test_a_reward_that_raises_names_the_function_and_the_row(smollm, tmp_path):
    def needs_digits(prompts, completions, answer, **kwargs):
        return [float(int(a) == 5) for a in answer]  # int("B") raises on the second row

    with pytest.raises(TunesmithError) as err:
        _trainer(smollm, tmp_path, [format_reward, needs_digits], max_steps=1)
    message = str(err.value)
    assert "'needs_digits'" in message and "ValueError" in message and "data row 2" in message
    assert "apple" in message and "Fix the function" in message


def test_a_reward_of_the_wrong_length_is_refused(smollm, tmp_path):
    def one_number(prompts, completions, **kwargs):
        return [1.0]

    with pytest.raises(
        TunesmithError, match=r"'one_number' returned 1 rewards for 2 completions .*one number"
    ):
        _trainer(smollm, tmp_path, ["format", one_number], max_steps=1)
    with pytest.raises(TunesmithError, match=r"'formatt'.*did you mean 'format'"):
        _trainer(smollm, tmp_path, ["formatt"], max_steps=1)


def test_grpo_with_the_format_reward_raises_the_mean_reward(smollm, tmp_path):
    from tunesmith import GRPOConfig, GRPOTrainer, PromptTemplate
    from tunesmith.data import builtin_dataset_path
    from tunesmith.generation.generate import last_generation
    from tunesmith.training import get_peft_model

    model, tokenizer = smollm
    model = get_peft_model(model, r=8, lora_alpha=16, random_state=3407, use_gradient_checkpointing=False)
    args = GRPOConfig(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=8, num_generations=4,
        max_completion_length=12, learning_rate=1e-3, logging_steps=1, save_steps=100, seed=3407, bf16=False,
        beta=0.0, warmup_steps=0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, tokenizer=tokenizer, reward_funcs=["format"], args=args,
        train_dataset=str(builtin_dataset_path("medquad_en")), fields={"prompt": "instruction"},
        template=PromptTemplate(ONE_SHOT),
    )  # fmt: skip
    trainer.train()
    record = last_generation(model)
    assert record.path == "eager" and record.new_tokens >= 1, "completions come from tunesmith's decode loop"
    assert "generate" not in model.__dict__, "after training, generate() is transformers' again"
    summary = trainer.summary
    assert summary["reward_last"] > summary["reward_first"] + 0.1, [
        r.get("reward") for r in trainer.records()
    ]
    assert set(summary["rewards_last"]) == {"format_reward"}
    samples = json.loads((tmp_path / "samples.json").read_text())
    assert samples["start"][0]["step"] == 1 and samples["end"][0]["step"] == 8
    assert "format_reward" in samples["end"][0]["rewards"]
    assert (tmp_path / "rewards.png").is_file()
