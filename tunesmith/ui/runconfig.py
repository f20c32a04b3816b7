"""The page's choices as a ``tunesmith run`` config: built, validated by the recipe's own config code, and
written as the run folder's ``run.yaml`` (so the run is exactly what ``tunesmith run run.yaml`` does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tunesmith._atomic import atomic_file
from tunesmith.recipe.config import RunConfig, dump_config, load_config, parse_config
from tunesmith.ui.session import CONFIG_NAME, OUTPUT_DIR

__all__ = ["Choices", "build_config", "write_config", "read_config", "DEFAULT_PROMPT_TEMPLATE"]

DEFAULT_PROMPT_TEMPLATE = "### Question:\n{instruction}\n\n### Answer:\n{output}"
# The page starts where a bare `tunesmith run` starts: the built-in example config, sized for a CPU (the
# tutorial's own 75 steps at 2,048 tokens would take hours on 2 cores).
_DEFAULTS = load_config()


@dataclass
class Choices:
    """What the page asks for; every default is the ``tunesmith run`` default."""

    model: str = _DEFAULTS.model.name
    load_in_4bit: bool = _DEFAULTS.model.load_in_4bit
    max_seq_length: int = _DEFAULTS.model.max_seq_length
    data_file: str | None = None
    eval_split: float = _DEFAULTS.data.eval_split
    use_prompt_template: bool = False
    chat_template: str = "tokenizer"
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    max_steps: int = _DEFAULTS.training.max_steps
    learning_rate: float = _DEFAULTS.training.learning_rate
    batch_size: int = _DEFAULTS.training.per_device_train_batch_size
    grad_accum: int = _DEFAULTS.training.gradient_accumulation_steps
    warmup_steps: int = _DEFAULTS.training.warmup_steps
    save_steps: int = _DEFAULTS.training.save_steps
    lora_r: int = _DEFAULTS.lora.r
    lora_alpha: int = _DEFAULTS.lora.lora_alpha
    probes: list[str] = field(default_factory=lambda: list(_DEFAULTS.probes))
    max_new_tokens: int = _DEFAULTS.generation.max_new_tokens
    quant: str = _DEFAULTS.export.quant
    modelfile: bool = _DEFAULTS.export.modelfile
    verify: bool = _DEFAULTS.export.verify


def _whole(value: float | int) -> int | float:
    """Number boxes send floats: 2.0 becomes 2, so the config's integer fields accept it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def build_config(choices: Choices, run_folder: Path) -> RunConfig:
    """The validated config for ``choices`` (a TunesmithError names the bad field and value)."""
    data = {
        "model": {
            "name": choices.model.strip(),
            "load_in_4bit": choices.load_in_4bit,
            "max_seq_length": _whole(choices.max_seq_length),
        },
        "data": {"file": choices.data_file, "eval_split": choices.eval_split},
        "lora": {"r": _whole(choices.lora_r), "lora_alpha": _whole(choices.lora_alpha)},
        "training": {
            "max_steps": _whole(choices.max_steps),
            "learning_rate": choices.learning_rate,
            "per_device_train_batch_size": _whole(choices.batch_size),
            "gradient_accumulation_steps": _whole(choices.grad_accum),
            "warmup_steps": _whole(choices.warmup_steps),
            "save_steps": _whole(choices.save_steps),
        },
        "probes": [p.strip() for p in choices.probes if p.strip()],
        "generation": {"max_new_tokens": _whole(choices.max_new_tokens)},
        # the adapter too: the page's chat box loads base model + adapter, without a second export
        "export": {
            "formats": ["gguf", "lora"],
            "quant": choices.quant,
            "modelfile": choices.modelfile,
            "verify": choices.verify,
            "name": run_folder.name,
        },
        "output": {"folder": str(run_folder / OUTPUT_DIR)},
    }
    if choices.use_prompt_template:
        data["data"]["prompt_template"] = choices.prompt_template
    else:
        data["data"]["chat_template"] = choices.chat_template
    return parse_config(data, source="the page's settings", base_dir=run_folder)


def write_config(config: RunConfig, run_folder: Path) -> Path:
    """Write ``config`` as ``run_folder/run.yaml`` (atomically); its path."""
    path = run_folder / CONFIG_NAME
    with atomic_file(path, "w") as handle:
        handle.write(f"# written by tunesmith ui; rerun with: tunesmith run {path}\n")
        handle.write(dump_config(config))
    return path


def read_config(run_folder: Path) -> RunConfig:
    """The config of the run in ``run_folder`` (read back from its ``run.yaml``)."""
    path = run_folder / CONFIG_NAME
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_config(data, source=str(path), base_dir=run_folder)
