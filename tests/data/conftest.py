"""Fixtures for the data tests: the real SmolLM2 tokenizer (ChatML template) and small data files."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def smol_tokenizer_dir(default_model_path):
    return default_model_path


@pytest.fixture
def tokenizer(smol_tokenizer_dir):
    """A fresh copy of the real SmolLM2 tokenizer per test (tests change its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_tokenizer_dir)


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows to a .jsonl file and return its path."""

    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def alpaca_rows():
    """Three small, distinct Alpaca-layout rows."""
    return [dict(r) for r in ALPACA_ROWS]


ALPACA_ROWS = [
    {"instruction": "What causes anemia?", "input": "", "output": "Low iron is a common cause."},
    {"instruction": "What is a fever?", "input": "", "output": "A body temperature above normal."},
    {"instruction": "How is flu spread?", "input": "", "output": "Through droplets when people cough."},
]
