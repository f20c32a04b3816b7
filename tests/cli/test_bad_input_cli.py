"""Bad and odd input through the real CLI, one failure class per test: each ends in one clear paragraph
(what, where, what to do), a non-zero exit, no traceback and no partial file; no model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

GOOD = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(20)]
README_TEMPLATE = "### Question:\\n{instruction}\\n\\n### Answer:\\n{output}"


def tunesmith(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the ``tunesmith`` command of this checkout and capture its output."""
    cmd = [sys.executable, "-m", "tunesmith.cli.main", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def refused(proc: subprocess.CompletedProcess, *expected: str, root: Path) -> None:
    """The command failed with one clear message that names each ``expected`` text, and left no partials."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, f"{text!r} not in: {proc.stderr}"
    assert not list(root.rglob("*.partial")), "a partial file was left behind"


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_override_of_a_text_field_is_the_text_typed(tmp_path: Path) -> None:
    proc = tunesmith(
        "run", "--print-config", "--set", f"data.prompt_template={README_TEMPLATE}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)["data"]
    assert data["prompt_template"] == "### Question:\n{instruction}\n\n### Answer:\n{output}"
    assert data["chat_template"] is None  # the override replaces the file's choice instead of clashing


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("  prompt_template: ### Question: {instruction} ### Answer: {output}", "quote the value"),
        ("  prompt_template: # {instruction} {output}", "as a comment"),
    ],
)
def test_config_value_that_yaml_reads_as_a_comment(tmp_path: Path, line: str, expected: str) -> None:
    (tmp_path / "run.yaml").write_text(f"data:\n{line}\n", encoding="utf-8")
    refused(
        tunesmith("run", "run.yaml", "--dry-run", cwd=tmp_path),
        "data.prompt_template",
        expected,
        root=tmp_path,
    )


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("gbk-config", ["cfg.yaml", "GB18030", "iconv -f gb18030"]),
        ("gbk-data", ["qa.jsonl", "GB18030", "--set data.encoding='gb18030'"]),
        ("wrong-encoding", ["qa.jsonl", "not valid ascii", "--set data.encoding="]),
        ("unknown-encoding", ["not an encoding Python knows", "--set data.encoding='gb18030'"]),
        ("binary-data", ["qa.jsonl", "binary file", "JSON, JSONL, CSV"]),
        ("fake-parquet", ["qa.parquet", "not a Parquet file"]),
    ],
)
def test_wrong_encodings_and_binary_files(tmp_path: Path, kind: str, expected: list[str]) -> None:
    gbk = json.dumps({"instruction": "你好，我头疼", "output": "多喝水，休息一下"}, ensure_ascii=False)
    data = tmp_path / ("qa.parquet" if kind == "fake-parquet" else "qa.jsonl")
    binary = kind in ("binary-data", "fake-parquet")
    data.write_bytes(bytes(range(256)) * 20 if binary else ((gbk + "\n") * 20).encode("gbk"))
    encoding = {"wrong-encoding": "ascii", "unknown-encoding": "klingon"}.get(kind)
    config = "data:\n  file: qa.jsonl\n" if kind != "fake-parquet" else "data:\n  file: qa.parquet\n"
    config += f"  encoding: {encoding}\n" if encoding else ""
    if kind == "gbk-config":
        config = "probes:\n  - 你好，我头疼\n"
    (tmp_path / "cfg.yaml").write_bytes(config.encode("gbk"))
    refused(tunesmith("run", "cfg.yaml", "--dry-run", cwd=tmp_path), *expected, root=tmp_path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"instruction": "a", "output": 42}, {"instruction": "b", "output": "c"}], "row 1, field 'output'"),
        ([*GOOD[:3], {"instruction": "d", "output": ["x"]}], "row 4, field 'output'"),
        ([*GOOD[:3], {"instruction": "d", "output": ""}], "row 4"),
    ],
)
def test_wrong_types_in_data_rows_blame_the_right_row(tmp_path: Path, rows: list, expected: str) -> None:
    jsonl(tmp_path / "qa.jsonl", rows)
    proc = tunesmith("run", "--dry-run", "--set", "data.file=qa.jsonl", cwd=tmp_path)
    refused(proc, "qa.jsonl", expected, root=tmp_path)


def test_relative_data_file_on_the_command_line_starts_at_the_current_folder(tmp_path: Path) -> None:
    jsonl(tmp_path / "qa.jsonl", GOOD)
    proc = tunesmith(
        "run", "--dry-run", "--set", "data.file=qa.jsonl", "--set", "output.folder=out", cwd=tmp_path
    )
    assert proc.returncode == 0 and "qa.jsonl: 20 alpaca rows" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.optim=adam_9bit", ["training.optim", "did you mean 'adamw_8bit'"]),
        ("training.lr_scheduler_type=cosine_warm", ["training.lr_scheduler_type", "known: linear"]),
        ("data.chat_template=chatml2", ["data.chat_template", "did you mean 'chatml'"]),
        ("model.name=./no/such/model", ["model.name", "does not exist"]),
        ("model.name=cfgs", ["model.name", "no config.json"]),
        ("model.name=cfgs/fake.gguf", ["model.name", "not a GGUF file"]),
        ("model.name=cfgs/bert", ["model.name", "type 'bert'", "Supported model types"]),
        ("data.file=one.jsonl", ["one.jsonl has 1 row", "--set data.eval_split=0"]),
        ("data.file=dups.jsonl", ["after dropping 2 exact duplicates", "--set data.eval_split=0"]),
        ("output.folder=/proc/tunesmith/run", ["/proc", "cannot be written", "Choose a folder"]),
        ("output.folder=one.jsonl/run", ["one.jsonl is a file", "does not pass through a file"]),
        ("data.prompt_template={question} {output}", ["data.prompt_template", "{question}"]),
    ],
)
def test_dry_run_catches_what_the_run_would_hit_after_loading(
    tmp_path: Path, override: str, expected: list[str]
) -> None:
    jsonl(tmp_path / "one.jsonl", GOOD[:1])
    jsonl(tmp_path / "dups.jsonl", GOOD[:1] * 3)
    (tmp_path / "cfgs" / "bert").mkdir(parents=True)
    (tmp_path / "cfgs" / "bert" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "cfgs" / "fake.gguf").write_bytes(b"not a gguf at all")
    refused(tunesmith("run", "--dry-run", "--set", override, cwd=tmp_path), *expected, root=tmp_path)


def test_the_fix_a_failed_run_suggests_is_accepted(tmp_path: Path) -> None:
    jsonl(tmp_path / "one.jsonl", GOOD[:1])
    args = [
        "run",
        "--set",
        "data.file=one.jsonl",
        "--set",
        "output.folder=out",
        "--set",
        "export.verify=false",
    ]
    refused(tunesmith(*args, cwd=tmp_path), "--set data.eval_split=0", root=tmp_path)
    state = json.loads((tmp_path / "out" / "run-state.json").read_text())
    assert state["completed"] == []  # nothing finished, so the changed config may start afresh there
    fixed = tunesmith(*args, "--set", "data.eval_split=0", "--dry-run", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr


def test_a_folder_as_the_config(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    refused(tunesmith("run", "configs", "--dry-run", cwd=tmp_path), "configs is a folder", root=tmp_path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["export", "x", "--format", "gguf", "--out", "o", "--num-ctx", "-1"],
            "--num-ctx: must be at least 1",
        ),
        (
            ["export", "x", "--format", "gguf", "--out", "o", "--num-ctx", "many"],
            "--num-ctx: must be a whole",
        ),
        (["chat", "-p", ""], "--prompt/-p: is empty"),
        (["chat", "-p", "   "], "--prompt/-p: is empty"),
        (["chat", "--device", "gpu0", "-p", "hi"], "--device: 'gpu0' is not a device; use cpu, cuda"),
        (["verify", "fake.gguf", "--against", "x"], "fake.gguf is not a readable GGUF file"),
        (["verify", "notes.gguf", "--against", "x"], "notes.gguf"),
        (["verify", "short.gguf", "--against", "x"], "short.gguf is not a readable GGUF file"),
    ],
)
def test_bad_command_line_values_fail_before_any_model_loads(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    (tmp_path / "fake.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x07" * 64)
    (tmp_path / "notes.gguf").write_text("these are my notes")
    (tmp_path / "short.gguf").write_bytes(b"GGU")
    refused(tunesmith(*args, cwd=tmp_path), expected, root=tmp_path)


def _immutable(folder: Path) -> bool:
    folder.mkdir()
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["proc", "through-file", "immutable"])
@pytest.mark.parametrize("command", ["run", "export"])
def test_output_paths_that_cannot_be_written(tmp_path: Path, where: str, command: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    if where == "immutable" and not _immutable(tmp_path / "locked"):
        pytest.skip("chattr +i is not available here")
    out = {"proc": "/proc/tunesmith/out", "through-file": "file.txt/out", "immutable": "locked/out"}[where]
    try:
        if command == "run":
            proc = tunesmith("run", "--dry-run", "--set", f"output.folder={out}", cwd=tmp_path)
        else:
            proc = tunesmith("export", "no-such-model", "--format", "gguf", "--out", out, cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "locked")], capture_output=True)
    refused(proc, "cannot be", "Choose", root=tmp_path)
    assert "disk space" not in proc.stderr


@pytest.mark.parametrize("alive", [False, True])
def test_partial_files_of_a_killed_export(tmp_path: Path, alive: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pid = os.getpid() if alive else 2**22 + 7  # above the kernel's pid limit: no such process
    partial = out / f".out.Q8_0.gguf.{pid}-k1ll3d.partial"
    partial.write_bytes(b"\0" * 1024)
    proc = tunesmith(
        "export", "./no/such/model", "--format", "gguf", "--out", "out", "--overwrite", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    if alive:  # a living writer's file is named, never removed
        assert partial.exists() and partial.name in proc.stderr and "another process" in proc.stderr
    else:
        assert not partial.exists() and "interrupted export" in proc.stderr
        assert "does not exist" in proc.stderr  # the command went on to the next check


def test_a_hidden_file_in_the_output_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".keep").write_text("")
    proc = tunesmith("export", "./no/such/model", "--format", "gguf", "--out", "out", cwd=tmp_path)
    refused(proc, "out already exists and is not empty (it holds .keep)", "--overwrite", root=tmp_path)
