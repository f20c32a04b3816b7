"""The run's stages are listed once: unique keys, one per recorded result, headed lines from the config."""

from __future__ import annotations

from dataclasses import fields

from tunesmith.recipe.config import parse_config
from tunesmith.recipe.pipeline import STAGES
from tunesmith.recipe.results import RunResults


def test_every_result_has_its_stage() -> None:
    keys = [s.key for s in STAGES]
    assert len(keys) == len(set(keys))
    assert {f.name for f in fields(RunResults)} <= set(keys)


def test_headed_lines_name_the_config() -> None:
    config = parse_config({"training": {"max_steps": 7}, "export": {"formats": ["gguf", "lora"]}}, source="t")
    titles = [s.heading(config) for s in STAGES]
    assert "Training for 7 steps" in titles and "Exporting gguf, lora" in titles
    assert titles[0] == "Checking the environment and the data file"
