"""Data checks before any model loads: layout, declared format, template placeholders, every row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import parse_config
from tunesmith.recipe.datacheck import check_data


def _config(tmp_path: Path, rows: list[dict], **data) -> object:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return parse_config({"data": {"file": "rows.jsonl", **data}}, source="run.yaml", base_dir=tmp_path)


def test_summary_counts_rows_and_duplicates(tmp_path: Path) -> None:
    rows = [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q1", "output": "A1"}]
    rows.append({"instruction": "Q2", "output": "A2"})
    assert check_data(_config(tmp_path, rows)) == "rows.jsonl: 3 alpaca rows, 1 exact duplicates"


def test_declared_format_must_match_the_file(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
        format="alpaca",
    )
    with pytest.raises(
        TunesmithError, match="data.format is 'alpaca', but .*rows.jsonl looks like 'messages'"
    ):
        check_data(config)


def test_template_placeholder_the_data_lacks(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        [{"instruction": "Q", "output": "A"}],
        prompt_template="Q: {instruction}\n<think>{reasoning}</think>\n{output}",
    )
    with pytest.raises(TunesmithError, match=r"\{reasoning\}"):
        check_data(config)


def test_empty_answer_names_the_row(tmp_path: Path) -> None:
    config = _config(tmp_path, [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": "  "}])
    with pytest.raises(TunesmithError, match="row 2"):
        check_data(config)
