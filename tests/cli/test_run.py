"""``tunesmith run``: the command line around the run pipeline (config, overrides, dry runs, refusals)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def tunesmith(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the ``tunesmith`` command (this checkout) and capture its output."""
    cmd = [sys.executable, "-m", "tunesmith.cli.main", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_print_config_shows_the_resolved_default(tmp_path: Path) -> None:
    proc = tunesmith("run", "--print-config", "--set", "training.max_steps=7", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["model"]["name"] == "smollm2-135m-instruct"
    assert config["training"]["max_steps"] == 7 and config["training"]["learning_rate"] == 1.5e-3
    assert config["lora"] == {
        "r": 16,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": None,
        "bias": "none",
        "use_gradient_checkpointing": False,  # the CPU example's one change: 135M at 256 tokens fits
        "max_memory_gb": None,  # GPU only: plan for most of the card
        "random_state": 3407,
        "use_rslora": False,
    }
    assert Path(config["data"]["file"]).name == "medquad_en.jsonl"
    assert not (tmp_path / "runs").exists(), "--print-config must not write anything"


@pytest.mark.parametrize("name", ["medical-en.yaml", "medical-zh-deepseek-8b.yaml", "chat-messages-en.yaml"])
def test_dry_run_checks_every_example_offline(tmp_path: Path, name: str) -> None:
    proc = tunesmith("run", str(EXAMPLES / name), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Config OK. Data OK" in proc.stdout
    assert not (tmp_path / "runs").exists(), "--dry-run must not write anything"


def test_dry_run_finds_a_bad_row(tmp_path: Path) -> None:
    data = tmp_path / "qa.jsonl"
    rows = [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": ""}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "run.yaml").write_text("data:\n  file: qa.jsonl\n")
    proc = tunesmith("run", "run.yaml", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "qa.jsonl" in proc.stderr and "row 2" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("training:\n  max_stepz: 3\n", "Did you mean 'training.max_steps'?"),
        ("lora:\n  r: sixteen\n", "'lora.r' has the value 'sixteen'"),
        ("data:\n  file: nowhere.jsonl\n", "nowhere.jsonl"),
        ("probes:\n  - [not, a, string]\n", "'probes[0]'"),
    ],
)
def test_config_errors_are_one_paragraph(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    proc = tunesmith("run", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert expected in proc.stderr and "bad.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_bad_set_is_named(tmp_path: Path) -> None:
    proc = tunesmith("run", "--set", "training.max_steps", "--print-config", cwd=tmp_path)
    assert proc.returncode == 2 and "SECTION.FIELD=VALUE" in proc.stderr


def test_plain_tunesmith_runs_the_default_and_keeps_a_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "medical-en"
    folder.mkdir(parents=True)
    (folder / "run-state.json").write_text(
        json.dumps({"fingerprint": "x", "status": "finished", "completed": []})
    )
    proc = tunesmith(cwd=tmp_path)  # no subcommand: `run` on the built-in default (runs/medical-en)
    assert proc.returncode == 2
    assert "holds a finished run" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
