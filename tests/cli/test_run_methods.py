"""``tunesmith run`` with training.method dpo / orpo / grpo, as a user types it: the two examples pass
their checks, and bad preference data or a misspelt method setting is refused before any model loads."""

from __future__ import annotations

from pathlib import Path

from test_bad_input_cli import jsonl, refused, tunesmith

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_dpo_and_grpo_examples_pass_their_checks(tmp_path: Path) -> None:
    for name, found in (("dpo-medical-en", "120 preference pairs"), ("grpo-format-en", "200 prompts")):
        proc = tunesmith("run", str(EXAMPLES / f"{name}.yaml"), "--dry-run", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert found in proc.stdout


def test_a_preference_file_without_rejected_is_refused(tmp_path: Path) -> None:
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"Q{i}", "chosen": f"A{i}"} for i in range(20)])
    proc = tunesmith(
        "run", "--set", "training.method=dpo", "--set", f"data.file={pairs}", "--dry-run", cwd=tmp_path
    )
    refused(proc, str(pairs), "no 'rejected' column", "fields={'rejected':", root=tmp_path)


def test_identical_answers_and_misspelt_settings_are_refused(tmp_path: Path) -> None:
    rows = [{"prompt": f"Q{i}", "chosen": f"A{i}", "rejected": f"B{i}"} for i in range(20)]
    rows[6]["rejected"] = rows[6]["chosen"]
    pairs = jsonl(tmp_path / "pairs.jsonl", rows)
    proc = tunesmith(
        "run", "--set", "training.method=orpo", "--set", f"data.file={pairs}", "--dry-run", cwd=tmp_path
    )
    refused(proc, f"{pairs}, row 7", "identical", "remove the row", root=tmp_path)
    proc = tunesmith(
        "run", "--set", "training.method=dpo", "--set", "dpo.betta=0.2", "--dry-run", cwd=tmp_path
    )
    refused(proc, "'dpo.betta'", "Did you mean 'dpo.beta'?", root=tmp_path)
