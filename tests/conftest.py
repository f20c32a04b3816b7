"""Shared test set-up: offline, a test-session cache home, and the `gpu` marker that skips without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never reach a hub; each test session shares one cache so the embedded model converts once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "TUNESMITH_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tunesmith-test-home-{os.getuid()}")
)
# Subprocesses (CLI tests) import this checkout even when the package is not installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (data, tokenizers)."""
    if not SHARED.exists():
        pytest.skip("../shared is not present")
    return SHARED


@pytest.fixture(scope="session")
def llama_cpp_works() -> None:
    """llama.cpp is installed and decodes a multi-token batch here (a self-test in a child process).

    CI installs it (the test extra), so a missing or crashing build fails the llama.cpp tests, never skips them.
    """
    from tunesmith.errors import TunesmithError
    from tunesmith.export.llama_cpp import llama_cpp_version, self_test
    from tunesmith.models.registry import ALIASES, DEFAULT_MODEL
    from tunesmith.models.sources import alias_gguf_path

    if llama_cpp_version() is None:
        pytest.fail("llama-cpp-python is missing: pip install -e '.[test]' (CI installs it)")
    try:
        self_test(alias_gguf_path(ALIASES[DEFAULT_MODEL]))
    except TunesmithError as err:
        pytest.fail(f"llama.cpp does not work on this machine: {err}")


# -- shared models ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The embedded default (SmolLM2-135M-Instruct) as a transformers folder, converted once per cache."""
    from tunesmith.models.loader import materialize

    return materialize("smollm2-135m-instruct")


def _write_tiny_llama(folder: Path, tokenizer=None, dtype=None, **config) -> Path:
    """Save a random-init Llama (seed 0) of the given ``LlamaConfig`` sizes into ``folder``, with
    ``tokenizer`` beside it (its vocabulary size and bos/eos ids go into the config)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is not None:
        config = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, **config)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config))
    (model if dtype is None else model.to(dtype)).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def write_tiny_llama():
    """``write_tiny_llama(folder, tokenizer=None, dtype=None, **config)``: a tiny random-init Llama folder."""
    return _write_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(default_model_path, tmp_path_factory) -> Path:
    """A tiny random-init Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer, transformers layout."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    return _write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer, hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip


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


@pytest.fixture(scope="session")
def chatml_bpe_tokenizer():
    """A small byte-level BPE tokenizer with ChatML special tokens and template, trained here (no files
    needed: GPU tests use it, the GPU machine has neither the embedded default nor ../shared)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [
        "The patient reported fatigue and a headache for two weeks.",
        "Rest, fluids and a balanced diet help most people recover.",
        "Ask a doctor when a fever lasts longer than three days.",
    ] * 20
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(text, trainers.BpeTrainer(vocab_size=512, special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=specials[0], bos_token=specials[1], eos_token=specials[2]
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer
