"""Fixtures for the training tests: the embedded default model (the tiny Llama and the medical rows live in
tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def smollm(default_model_path):
    """The embedded default model (SmolLM2-135M-Instruct) and tokenizer, fresh per test."""
    from tunesmith.models.loader import load

    return load("smollm2-135m-instruct", max_seq_length=256)
