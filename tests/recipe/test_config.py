"""The run config: tutorial defaults, overrides, and one clear paragraph for every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import apply_overrides, default_config_path, dump_config, load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(TunesmithError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_are_the_tutorials(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert (config.lora.r, config.lora.lora_alpha, config.lora.lora_dropout) == (16, 16, 0.0)
    t = config.training
    assert (t.learning_rate, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (2e-4, 2, 4)
    assert (t.warmup_steps, t.lr_scheduler_type, t.optim, t.weight_decay, t.seed) == (
        5,
        "linear",
        "adamw_8bit",
        0.01,
        3407,
    )
    assert config.export.quant == "q8_0" and config.export.formats == ["gguf"]
    assert Path(config.data.file).is_file(), "the default data is the MedQuAD subset shipped in the package"
    assert config.output.folder == "runs/run"


def test_embedded_default_is_the_medical_en_example() -> None:
    assert default_config_path().read_bytes() == (EXAMPLES / "medical-en.yaml").read_bytes()
    config = load_config(None)
    assert config.model.name == "smollm2-135m-instruct"
    assert config.probes[0] == "What are common causes of fatigue?" and len(config.probes) == 3
    assert config.output.folder == "runs/medical-en"


@pytest.mark.parametrize("name", ["medical-en.yaml", "medical-zh-deepseek-8b.yaml", "chat-messages-en.yaml"])
def test_every_example_validates(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert Path(config.data.file).is_file()


def test_chinese_example_keeps_the_tutorials_reasoning_prompt() -> None:
    from tunesmith.data.prompt_template import PromptTemplate

    config = load_config(EXAMPLES / "medical-zh-deepseek-8b.yaml")
    assert config.model.load_in_4bit and config.model.name == "unsloth/DeepSeek-R1-Distill-Llama-8B"
    template = PromptTemplate(config.data.prompt_template)
    assert template.placeholders == ("instruction", "reasoning", "output")
    assert template.prompt("问题").endswith("### 回答：\n<think>")  # the model starts inside <think>
    assert template.completion("答案", reasoning="想法") == "想法</think>\n答案"
    assert "<思考>" not in config.data.prompt_template  # one tag, the one inference uses
    assert config.probes[0] == "我最近总是感到疲劳，可能是什么原因？"
    shipped = Path(config.data.file).read_text(encoding="utf-8").splitlines()
    assert len(shipped) == 300
    assert "MIT" in (Path(config.data.file).parent / "README.md").read_text()


def test_set_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  max_steps: 75\n")
    config = load_config(
        path, ["training.max_steps=10", 'probes=["Why?", "How?"]', "export.formats=[gguf, lora]"]
    )
    assert config.training.max_steps == 10
    assert config.probes == ["Why?", "How?"]
    assert config.export.formats == ["gguf", "lora"]
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    # questions end in '?', which plain YAML refuses inside [...]: still a list of questions
    assert load_config(path, ["probes=[Why am I tired?, Is it anemia?]"]).probes == [
        "Why am I tired?",
        "Is it anemia?",
    ]


def test_print_config_round_trips(tmp_path: Path) -> None:
    config = load_config(EXAMPLES / "medical-zh-deepseek-8b.yaml")
    again = _write(tmp_path, dump_config(config), "resolved.yaml")
    assert load_config(again) == config
    assert "以下是描述任务的指令" in dump_config(config)  # Chinese stays readable


def test_unknown_key_names_file_field_and_closest_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "training:\n  learning_rat: 1.0e-4\n")
    message = _error(path)
    assert str(path) in message and "'training.learning_rat'" in message
    assert "Did you mean 'training.learning_rate'?" in message
    assert "\n" not in message


def test_unknown_section_gets_a_hint(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "trainng:\n  max_steps: 3\n"))
    assert "'trainng'" in message and "Did you mean 'training'?" in message


def test_wrong_type_names_the_value(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "training:\n  max_steps: ten\n"))
    assert "'training.max_steps'" in message and "'ten'" in message and "integer" in message


def test_wrong_type_from_set_says_so(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, ""), ["lora.r=big"])
    assert "--set lora.r=big" in message and "'lora.r'" in message


def test_bad_choice_suggests_the_closest(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "export:\n  quant: q8\n"))
    assert "'export.quant'" in message and "Did you mean 'q8_0'?" in message


def test_missing_data_file_is_caught_before_anything_loads(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "data:\n  file: missing.jsonl\n"))
    assert "'data.file'" in message and str(tmp_path / "missing.jsonl") in message


def test_probes_must_be_strings(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "probes:\n  - What is anemia?\n  - 42\n"))
    assert "'probes[1]'" in message and "valid string" in message
    message = _error(_write(tmp_path, "probes: What is anemia?\n", "single.yaml"))
    assert "'probes'" in message and "list" in message


def test_bad_prompt_template_is_named(tmp_path: Path) -> None:
    text = yaml.safe_dump({"data": {"prompt_template": "Q: {question}\nA: {output}"}})
    message = _error(_write(tmp_path, text))
    assert "'data.prompt_template'" in message and "{question}" in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, "training:\n  max_steps: [10\n"))
    assert "not valid YAML" in message and "line" in message


def test_toml_config(tmp_path: Path) -> None:
    path = _write(
        tmp_path, '[training]\nmax_steps = 12\n[model]\nname = "smollm2-135m-instruct"\n', "run.toml"
    )
    assert load_config(path).training.max_steps == 12
    assert load_config(path).output.folder == "runs/run"


def test_missing_config_file(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.yaml")
    assert "does not exist" in message and "nope.yaml" in message


def test_data_choices_match_the_data_module() -> None:
    from typing import get_args

    from tunesmith.data.tokenizing import TOO_LONG_POLICIES
    from tunesmith.data.validation import DUPLICATE_POLICIES
    from tunesmith.recipe.config import DataConfig

    assert get_args(DataConfig.model_fields["too_long"].annotation) == TOO_LONG_POLICIES
    assert get_args(DataConfig.model_fields["duplicates"].annotation) == DUPLICATE_POLICIES


def test_gpu_memory_cap_is_a_positive_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    assert load_config(path).lora.max_memory_gb is None, "default: plan for most of the card"
    assert load_config(path, ["lora.max_memory_gb=8"]).lora.max_memory_gb == 8.0
    message = _error(path, ["lora.max_memory_gb=0"])
    assert "'lora.max_memory_gb'" in message and "greater than 0" in message


def test_a_repetition_penalty_below_one_is_refused_before_anything_runs(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    assert load_config(path).generation.repetition_penalty == 1.0, "default: transformers' own (off)"
    assert load_config(path, ["generation.repetition_penalty=1.05"]).generation.repetition_penalty == 1.05
    message = _error(path, ["generation.repetition_penalty=0.9"])
    assert "'generation.repetition_penalty'" in message and "0.9" in message
