"""The output folder: fresh, resumed, refused or overwritten — never mixed, never deleting others' files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.recipe.results import CheckResult, TrainResult, VerifyResult
from tunesmith.recipe.state import STATE_FILE, RunState, config_fingerprint, open_output_folder


def _previous_run(folder: Path, status: str, fingerprint: str = "abc", completed=("check", "load")) -> None:
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("old report")
    payload = {
        "fingerprint": fingerprint,
        "status": status,
        "completed": list(completed),
        "results": {"check": {"environment": {"python": "3.11"}}},
    }
    (folder / STATE_FILE).write_text(json.dumps(payload))


def test_fresh_folder_is_created(tmp_path: Path) -> None:
    state = open_output_folder(tmp_path / "run", "abc", overwrite=False)
    assert not state.resumed and state.completed == []
    assert json.loads((tmp_path / "run" / STATE_FILE).read_text())["status"] == "running"


def test_finished_run_is_refused_without_overwrite(tmp_path: Path) -> None:
    _previous_run(tmp_path / "run", "finished")
    with pytest.raises(TunesmithError, match="holds a finished run.*--overwrite"):
        open_output_folder(tmp_path / "run", "abc", overwrite=False)
    assert (tmp_path / "run" / "report.md").read_text() == "old report"


def test_overwrite_starts_afresh(tmp_path: Path) -> None:
    _previous_run(tmp_path / "run", "finished")
    state = open_output_folder(tmp_path / "run", "abc", overwrite=True)
    assert not state.resumed and not (tmp_path / "run" / "report.md").exists()


def test_interrupted_run_of_the_same_config_resumes(tmp_path: Path) -> None:
    _previous_run(tmp_path / "run", "interrupted")
    state = open_output_folder(tmp_path / "run", "abc", overwrite=False)
    assert state.resumed and state.completed == ["check", "load"] and state.done("load")


def test_unfinished_run_of_another_config_is_refused(tmp_path: Path) -> None:
    _previous_run(tmp_path / "run", "interrupted", fingerprint="other")
    with pytest.raises(TunesmithError, match="different config"):
        open_output_folder(tmp_path / "run", "abc", overwrite=False)


def test_a_run_that_failed_before_any_stage_restarts_with_another_config(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_FILE).write_text(
        json.dumps({"fingerprint": "other", "status": "failed", "completed": []})
    )
    state = open_output_folder(tmp_path / "run", "abc", overwrite=False)
    assert not state.resumed and state.fingerprint == "abc"


def test_foreign_files_are_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.docx").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(TunesmithError, match="not from a tunesmith run"):
            open_output_folder(tmp_path / "run", "abc", overwrite=overwrite)
    assert (tmp_path / "run" / "thesis.docx").read_text() == "precious"


def test_fingerprint_ignores_only_overwrite() -> None:
    base = {"training": {"max_steps": 10}, "output": {"folder": "x", "overwrite": False}}
    same = {"training": {"max_steps": 10}, "output": {"folder": "x", "overwrite": True}}
    other = {"training": {"max_steps": 11}, "output": {"folder": "x", "overwrite": False}}
    assert config_fingerprint(base) == config_fingerprint(same) != config_fingerprint(other)


def test_results_are_read_back_typed(tmp_path: Path) -> None:
    _previous_run(tmp_path / "run", "interrupted")
    state = open_output_folder(tmp_path / "run", "abc", overwrite=False)
    assert isinstance(state.results.check, CheckResult) and state.results.check.environment == {
        "python": "3.11"
    }
    assert state.status == "running"
    state.complete("train", TrainResult(losses=[(1, 2.5)], steps=1))
    again = RunState.read(tmp_path / "run")
    assert again.results.train == TrainResult(losses=[(1, 2.5)], steps=1) and again.done("train")


def test_a_result_that_could_not_finish_leaves_its_stage_undone(tmp_path: Path) -> None:
    state = open_output_folder(tmp_path / "run", "abc", overwrite=False)
    state.complete("verify", VerifyResult(gguf="gguf/m.gguf", could_not_run="llama.cpp crashed"))
    again = RunState.read(tmp_path / "run")
    assert not again.done("verify") and again.results.verify.could_not_run == "llama.cpp crashed"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"results": {"lora": {"no_such_field": 1}}})])
def test_a_state_file_that_cannot_be_read_is_not_taken_for_a_run(tmp_path: Path, text: str) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STATE_FILE).write_text(text)
    with pytest.raises(TunesmithError, match="not from a tunesmith run"):
        open_output_folder(tmp_path / "run", "abc", overwrite=True)
    assert (tmp_path / "run" / STATE_FILE).read_text() == text
