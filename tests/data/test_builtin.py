"""The shipped medical data subset: findable, small, clean, and carrying its licence notice."""

from __future__ import annotations

import json

import pytest

from tunesmith.data import builtin_dataset_path, load_dataset_file
from tunesmith.errors import TunesmithError


def test_medquad_subset_is_small_clean_and_attributed():
    path = builtin_dataset_path("medquad_en")
    assert path.stat().st_size < 1.5 * 1024 * 1024
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert 600 <= len(rows) <= 1000
    assert all(set(r) == {"instruction", "input", "output"} and r["output"].strip() for r in rows)
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)  # no exact duplicates
    assert len(load_dataset_file(path)) == len(rows)
    notice = (path.parent / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in notice and "Ben Abacha" in notice and "BMC Bioinformatics 20, 511 (2019)" in notice


def test_unknown_builtin_name_suggests_the_closest():
    with pytest.raises(TunesmithError, match="did you mean 'medquad_en'"):
        builtin_dataset_path("medquad")
