"""The web app's glue without a browser: strings, the config it writes, run folders and uploads, path
safety, one run at a time and Stop (a real ``tunesmith run`` child), progress parsing, views, previews."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.ui import views
from tunesmith.ui.i18n import STRINGS, language_of, text
from tunesmith.ui.progress import log_tail, read_progress
from tunesmith.ui.runconfig import Choices, build_config, read_config, write_config
from tunesmith.ui.session import CONFIG_NAME, LOG_NAME, TrainingJob, Workspace, inside


def _rows(n: int) -> list[dict]:
    from tunesmith.data import builtin_dataset_path

    lines = builtin_dataset_path("medquad_en").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "runs", max_upload_mb=1)


@pytest.fixture
def run_folder(workspace, tmp_path) -> Path:
    """A run folder holding a kept copy of 24 shipped rows."""
    folder = workspace.new_run_folder()
    workspace.keep_data(_jsonl(tmp_path / "small.jsonl", _rows(24)), folder)
    return folder


def test_both_languages_have_every_string_and_fill_their_slots() -> None:
    assert set(STRINGS["en"]) == set(STRINGS["zh"])
    for key, english in STRINGS["en"].items():
        assert english.count("{") == STRINGS["zh"][key].count("{"), key
    assert text("zh", "step_of", step=3, total=75) == "第 3 / 75 步"
    assert language_of("中文") == "zh" and language_of("English") == "en" and language_of(None) == "en"


def test_the_choices_become_a_validated_run_config_that_round_trips(run_folder) -> None:
    from tunesmith.recipe.pipeline import dry_run

    data = next((run_folder / "data").iterdir())
    choices = Choices(data_file=str(data), max_steps=2.0, use_prompt_template=True,
                      prompt_template="Q: {instruction}\nA: {output}", probes=["What is anemia?"])  # fmt: skip
    config = build_config(choices, run_folder)
    assert config.training.max_steps == 2 and config.data.prompt_template.startswith("Q: ")
    assert config.data.chat_template is None
    assert config.output.folder == str(run_folder / "output")
    assert config.export.formats == ["gguf", "lora"]  # the chat box loads the adapter
    assert config.export.name == run_folder.name
    path = write_config(config, run_folder)
    assert read_config(run_folder) == config
    assert path.read_text().startswith("# written by tunesmith ui; rerun with: tunesmith run ")
    dry_run(read_config(run_folder))  # the file is a tunesmith run config: its own check passes


def test_a_bad_setting_is_one_paragraph_naming_the_field(run_folder) -> None:
    data = next((run_folder / "data").iterdir())
    with pytest.raises(TunesmithError, match=r"the field 'training.max_steps' has the value 0"):
        build_config(Choices(data_file=str(data), max_steps=0), run_folder)
    with pytest.raises(TunesmithError, match=r"model.name"):
        build_config(Choices(data_file=str(data), model=str(run_folder / "no-such-model")), run_folder)


def test_uploads_are_size_limited_and_copied_into_the_run_folder(workspace, tmp_path) -> None:
    first, second = workspace.new_run_folder(), workspace.new_run_folder()
    assert first != second and first.parent == second.parent == workspace.root
    kept = workspace.keep_data(_jsonl(tmp_path / "rows.jsonl", _rows(3)), first)
    assert kept == first / "data" / "rows.jsonl" and kept.read_text().count("\n") == 3
    big = tmp_path / "big.jsonl"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    with pytest.raises(TunesmithError, match=r"big.jsonl is 1.0 MB, more than the upload limit of 1 MB"):
        workspace.keep_data(big, second)
    assert not (second / "data").exists()


def test_no_path_outside_the_run_folder_or_the_model_folder_is_allowed(workspace, tmp_path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    roots = workspace.allowed_roots(str(model))
    inside(workspace.root / "run-1" / "data" / "x.jsonl", roots)
    inside(model / "config.json", roots)
    for outside in ("/etc/passwd", workspace.root / ".." / "secret.txt"):
        with pytest.raises(TunesmithError, match="outside the run folder"):
            inside(outside, roots)
    link = workspace.root / "escape"
    link.symlink_to("/etc")
    with pytest.raises(TunesmithError, match="outside"):
        inside(link / "passwd", roots)  # a link out of the folder does not count as inside
    assert workspace.allowed_roots("smollm2-135m-instruct") == [workspace.root]


def test_one_run_at_a_time_and_stop_is_ctrl_c(run_folder) -> None:
    data = next((run_folder / "data").iterdir())
    write_config(build_config(Choices(data_file=str(data), max_steps=2), run_folder), run_folder)
    job = TrainingJob()
    job.start(run_folder)
    try:
        with pytest.raises(TunesmithError, match="already going .*only one run at a time"):
            job.start(run_folder)
        deadline = time.monotonic() + 120
        while "[1/11]" not in log_tail(run_folder / LOG_NAME) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.stop()
        assert job.wait(120) == 130, log_tail(run_folder / LOG_NAME)  # the CLI's exit status for Ctrl-C
    finally:
        if job.running:
            job.process.kill()
    state = json.loads((run_folder / "output" / "run-state.json").read_text())
    assert state["status"] == "interrupted"
    assert not job.stop()


def _log(folder: Path, records: list[dict]) -> None:
    (folder / "training").mkdir(parents=True, exist_ok=True)
    (folder / "training" / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_progress_reads_the_curve_eta_and_tokens_per_second_from_the_run_files(tmp_path) -> None:
    from tunesmith.recipe.results import LoraResult
    from tunesmith.recipe.state import RunState

    out = tmp_path / "output"
    out.mkdir()
    state = RunState(folder=out, fingerprint="f")
    state.complete("lora", LoraResult(eval_loss_before=2.9))
    _log(out, [{"step": 1, "loss": 2.6, "num_tokens": 300.0, "elapsed_s": 5.0},
               {"step": 2, "loss": 2.5, "num_tokens": 700.0, "elapsed_s": 10.0}])  # fmt: skip
    log = "[4/11] Loading and formatting the data ...\n[6/11] Training for 10 steps ...\ntraining: 20%|##"
    progress = read_progress(out, 10, log)
    assert progress.train == [(1, 2.6), (2, 2.5)] and progress.held_out == [(0, 2.9)]
    assert progress.step == 2 and progress.fraction == pytest.approx(0.2)
    assert progress.eta_s == pytest.approx(40.0)  # 5 s per step, 8 steps to go
    assert progress.tokens_per_s == pytest.approx(80.0)  # 400 tokens in 5 s
    assert (progress.stage, progress.stage_number, progress.stage_count) == ("Training for 10 steps", 6, 11)
    html = views.progress_view(progress, "en")
    assert "20%" in html and "step 2 of 10" in html and "ETA 0:40" in html and "80 tokens/s" in html
    points = views.curve_points(progress)
    assert {p["series"] for p in points} == {
        views.series_name("series_train"),
        views.series_name("series_held_out"),
    }


def test_a_resumed_log_counts_only_the_new_attempt(tmp_path) -> None:
    out = tmp_path / "output"
    _log(out, [{"step": 1, "loss": 2.6, "num_tokens": 300.0, "elapsed_s": 5.0},
               {"step": 2, "loss": 2.5, "num_tokens": 700.0, "elapsed_s": 10.0},
               {"step": 3, "loss": 2.4, "num_tokens": 1000.0, "elapsed_s": 2.0},   # resumed: the clock restarts
               {"step": 4, "loss": 2.3, "num_tokens": 1500.0, "elapsed_s": 4.0}])  # fmt: skip
    progress = read_progress(out, 6, "")
    assert progress.eta_s == pytest.approx(4.0)  # 2 s per step since the restart, 2 steps to go
    assert progress.tokens_per_s == pytest.approx(250.0)
    # one step after the restart, TRL counting its tokens afresh (as it does on resume)
    _log(out, [{"step": 2, "loss": 2.5, "num_tokens": 700.0, "elapsed_s": 10.0},
               {"step": 3, "loss": 2.4, "num_tokens": 360.0, "elapsed_s": 8.0}])  # fmt: skip
    assert read_progress(out, 3, "").tokens_per_s == pytest.approx(45.0)
    assert views.curve_points(read_progress(tmp_path / "none", 6, "")) == []  # no training step yet: no curve


def test_the_log_tail_shows_each_progress_bar_once(tmp_path) -> None:
    path = tmp_path / "log"
    path.write_text("[6/11] Training ...\ntraining:  0%|  | 0/2\rtraining: 50%|# | 1/2\rtraining: 100%|##| 2/2\n"
                    "writing a.gguf:  10%|#|\nwriting a.gguf:  90%|#########|\n[7/11] next\n")  # fmt: skip
    assert log_tail(path).splitlines() == [
        "[6/11] Training ...", "training: 100%|##| 2/2", "writing a.gguf:  90%|#########|", "[7/11] next"
    ]  # fmt: skip


def test_the_data_preview_shows_counts_and_the_formatted_rows_as_trained(run_folder) -> None:
    from tunesmith.ui.preview import preview_data, preview_prompt

    rows = _rows(20)
    data = _jsonl(run_folder / "data" / "dup.jsonl", [*rows, rows[0]])  # one exact duplicate
    choices = Choices(data_file=str(data), max_seq_length=64)
    preview = preview_data(build_config(choices, run_folder))
    assert preview.ok and preview.stats.layout == "alpaca"
    assert (preview.stats.rows, preview.stats.eval_rows, preview.stats.duplicates) == (
        19,
        1,
        1,
    )  # the built-in config holds out 5%
    assert preview.stats.truncated > 0 and preview.eos == "<|im_end|>"
    html = views.data_view(preview, "en")
    assert "duplicates dropped" in html and "training rows" in html
    assert '<mark class="ts-eos">&lt;|im_end|&gt;</mark>' in html and "&lt;|im_start|&gt;user" in html
    choices.use_prompt_template, choices.prompt_template = True, "### Q:\n{instruction}\n### A:\n{output}"
    prompt = preview_prompt(build_config(choices, run_folder))
    assert prompt.rows[0].startswith("### Q:\n" + rows[0]["instruction"]) and prompt.rows[0].endswith(
        "<|im_end|>"
    )


def test_every_bad_row_is_listed_with_its_row_and_field(run_folder) -> None:
    from tunesmith.ui.preview import preview_data

    good = _rows(3)
    bad = [good[0], {**good[1], "output": " "}, {"instruction": "Why?"}, good[2]]
    data = _jsonl(run_folder / "data" / "bad.jsonl", bad)
    preview = preview_data(build_config(Choices(data_file=str(data)), run_folder))
    assert not preview.ok and len(preview.errors) == 2
    assert "bad.jsonl, row 2, field 'output' is empty" in preview.errors[0]
    assert "bad.jsonl, row 3, field 'output' is missing" in preview.errors[1]
    assert views.data_view(preview, "en").count("<li>") == 2


def test_answers_verification_and_commands_are_shown_as_the_run_recorded_them() -> None:
    from tunesmith.recipe.report import ProbeAnswer, ReportData
    from tunesmith.recipe.results import VerifyResult

    report = ReportData(title="t", status="finished", config_yaml="", ollama_name="run-1",
                        probes=[ProbeAnswer("What is <b>?", "before <script>", "after")],
                        modelfile="gguf/Modelfile", gguf_file="gguf/run-1.Q8_0.gguf")  # fmt: skip
    compare = views.compare_view(report, "en")
    assert compare.index("before &lt;script&gt;") < compare.index(">after<")  # side by side, escaped
    passed = VerifyResult(gguf="gguf/run-1.Q8_0.gguf", file_type="MOSTLY_Q8_0", passed=True,
                          tokenization_identical=True, top1_agreement=0.995, top1_threshold=0.99,
                          greedy_matches=3, prompts=4)  # fmt: skip
    shown = views.verification_view(report, passed, "en")
    assert "PASSED" in shown and "99.5% (&gt;= 99%)" in shown and "3 / 4" in shown
    crashed = VerifyResult(gguf="g.gguf", could_not_run="llama.cpp crashed (SIGSEGV).")
    assert "Could not run: llama.cpp crashed" in views.verification_view(report, crashed, "en")
    commands = views.commands_view(report, Path("/runs/run-1/output"), "en")
    assert "cd /runs/run-1/output" in commands
    assert "ollama create run-1 -f Modelfile" in commands and "ollama run run-1" in commands
    assert views.export_files(report, "/o") == ["/o/gguf/run-1.Q8_0.gguf", "/o/gguf/Modelfile"]


def test_a_failure_is_one_paragraph_never_a_traceback() -> None:
    shown = views.error_message(ValueError("bad thing."), "en")
    assert "Unexpected ValueError: bad thing." in shown and "Traceback" not in shown
    assert views.error_message(TunesmithError("A <clear> error."), "zh").count("&lt;clear&gt;") == 1
    assert views.duration(75) == "1:15" and views.duration(3725) == "1:02:05" and views.duration(None) == "?"


def test_the_chat_history_becomes_chat_messages() -> None:
    from tunesmith.ui.chatbox import history_messages

    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
    ]
    assert history_messages(history, "Why?") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}
    ]  # fmt: skip


def test_another_host_than_this_machine_is_warned_about_and_bad_arguments_refused() -> None:
    from tunesmith.cli.main import build_parser
    from tunesmith.ui.server import host_warning

    assert host_warning("127.0.0.1") is None and host_warning("localhost") is None
    assert "listens on 0.0.0.0, not only on this machine" in host_warning("0.0.0.0")
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.max_upload_mb) == ("127.0.0.1", 7860, 50.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--max-upload-mb", "0"])


def test_drafts_left_by_closed_pages_are_removed_and_runs_are_kept(workspace, tmp_path):
    import os
    import time

    source = _jsonl(tmp_path / "rows.jsonl", [{"instruction": "q", "output": "a"}])
    old_draft, new_draft, started = (workspace.new_run_folder() for _ in range(3))
    for folder in (old_draft, new_draft, started):
        workspace.keep_data(source, folder)
    (started / CONFIG_NAME).write_text("model: {}\n", encoding="utf-8")
    long_ago = time.time() - 2 * 3600
    for folder in (old_draft, started):
        for path in [folder, *folder.rglob("*")]:
            os.utime(path, (long_ago, long_ago))
    assert workspace.remove_drafts() == [old_draft]
    assert not old_draft.exists() and new_draft.is_dir() and started.is_dir()
