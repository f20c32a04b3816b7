"""The run's stages are listed once: unique keys, one per recorded result, headed lines from the config."""

from __future__ import annotations

import sys
from dataclasses import fields

import pytest

from tunesmith.recipe.config import parse_config
from tunesmith.recipe.context import TRAINING_DIR, RunContext, Stage
from tunesmith.recipe.pipeline import STAGES
from tunesmith.recipe.results import RunResults
from tunesmith.recipe.state import RunState


def test_every_result_has_its_stage() -> None:
    keys = [s.key for s in STAGES]
    assert len(keys) == len(set(keys))
    assert {f.name for f in fields(RunResults)} <= set(keys)


def test_headed_lines_name_the_config() -> None:
    config = parse_config({"training": {"max_steps": 7}, "export": {"formats": ["gguf", "lora"]}}, source="t")
    titles = [s.heading(config) for s in STAGES]
    assert "Training for 7 steps" in titles and "Exporting gguf, lora" in titles
    assert titles[0] == "Checking the environment and the data file"


def _interrupted(ctx: RunContext) -> None:
    raise KeyboardInterrupt


def test_a_ctrl_c_says_where_a_rerun_resumes_even_when_it_cut_a_library_import_half_way(
    tmp_path, capsys, monkeypatch
) -> None:
    config = parse_config({}, source="t")
    ctx = RunContext(config, RunState(tmp_path, "fingerprint"), 2, write_report=lambda ctx, text: None)
    stage = Stage("train", "Training", _interrupted)
    with pytest.raises(KeyboardInterrupt):
        ctx.run_stage(stage)
    assert "starts again from its first step" in capsys.readouterr().err, "no training yet, no checkpoint"
    (tmp_path / TRAINING_DIR).mkdir()
    # The Ctrl-C landed inside an import (seen in the suite: pandas left half-initialised), so the checkpoint module
    # cannot be imported now: the run must still stop with its message, not with that import's error.
    monkeypatch.setitem(sys.modules, "tunesmith.training.checkpoint", None)
    with pytest.raises(KeyboardInterrupt):
        ctx.run_stage(stage)
    err = capsys.readouterr().err
    assert "Stopped at once during stage 2/2 (Training)" in err
    assert "continues from its newest checkpoint, if one was saved" in err
    assert ctx.state.status == "interrupted"
