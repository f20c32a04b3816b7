"""The tutorial's Chinese example formats its shipped rows exactly as training and inference will see them."""

from __future__ import annotations

from pathlib import Path

from tunesmith.data import prepare_dataset
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.recipe.config import load_config
from tunesmith.recipe.pipeline import dataset_arguments, prompt_format

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_chinese_example_trains_on_the_think_prompt(shared_dir: Path) -> None:
    from transformers import AutoTokenizer

    # DeepSeek-R1-Distill-Llama-8B uses a Llama-3.1 tokenizer; the real one stands in offline
    tokenizer = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / "llama3_1")
    config = load_config(EXAMPLES / "medical-zh-deepseek-8b.yaml", ["data.max_rows=20"])
    d = config.data
    assert prompt_format(config) == PromptTemplate(d.prompt_template)
    prepared = prepare_dataset(tokenizer=tokenizer, **dataset_arguments(config))  # as the run's data stage
    text = prepared.train[0]["text"]
    assert "### 问题：\n" in text and "### 回答：\n<think></think>\n" in text
    assert text.endswith(tokenizer.eos_token) and text.count(tokenizer.eos_token) == 1
    # the probe is asked in the same format, ending where the model starts its <think> section
    assert PromptTemplate.from_chat_template(tokenizer.chat_template) == PromptTemplate(d.prompt_template)
    prompt = PromptTemplate(d.prompt_template).prompt(config.probes[0])
    assert prompt.endswith("### 回答：\n<think>") and "我最近总是感到疲劳" in prompt
    assert prepared.stats.rows == 18 and prepared.stats.eval_rows == 2
