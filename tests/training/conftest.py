"""Fixtures for the training tests: the embedded default model and a tiny random Llama, both real transformers models."""

from __future__ import annotations

import pytest


@pytest.fixture
def smollm(default_model_path):
    """The embedded default model (SmolLM2-135M-Instruct) and tokenizer, fresh per test."""
    from tunesmith.models.loader import load

    return load("smollm2-135m-instruct", max_seq_length=256)


@pytest.fixture
def tiny(tiny_llama_dir):
    """A tiny random-init Llama with the real SmolLM2 tokenizer, fresh per test."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture
def medquad_rows():
    """The shipped English medical Q&A rows as a datasets.Dataset."""
    from tunesmith.data import builtin_dataset_path, load_dataset_file

    return load_dataset_file(builtin_dataset_path("medquad_en"))
