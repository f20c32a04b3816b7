"""Shared test set-up: offline, a test-session cache home, the `gpu` marker that skips without CUDA, the
`interpreted` folders, and the fixtures several folders use (the shared folder, llama.cpp, model folders)."""

from __future__ import annotations

import os
import subprocess
import sys
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
# Under the README's two pytest-xdist workers, one OpenMP thread each: two workers of two spinning threads
# on 2 cores made the in-process training tests up to 11x slower (test_qlora: 18 s alone, 198 s beside
# another worker). Set before torch is imported; child processes inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Subprocesses (CLI tests) import this checkout even when the package is not installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


# Folders named ``interpreted`` hold Triton tests that run on CPU through Triton's interpreter.
# ``TRITON_INTERPRET=1`` must be set before Triton is first imported and changes how every Triton function in
# the process is built, so it cannot be switched on for part of a session without leaking into other tests:
# a plain session leaves these folders out, and a test beside each one (``run_interpreted``) runs it in a
# child pytest with the variable set. ``TRITON_INTERPRET=1 python -m pytest tests/kernels`` runs them directly.
INTERPRETED = "interpreted"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_ignore_collect(collection_path, config):
    if collection_path.name == INTERPRETED and not INTERPRET:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    stray = [item.nodeid for item in items if INTERPRETED in item.path.parent.parts and not INTERPRET]
    if stray:
        raise pytest.UsageError(f"{stray[0]} must run with TRITON_INTERPRET=1 (see tests/conftest.py)")
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def run_interpreted():
    """``run_interpreted(folder)``: run the tests in ``folder`` in a child pytest with ``TRITON_INTERPRET=1``;
    every one of them must pass (none may skip)."""

    def run(folder: Path) -> None:
        import triton  # noqa: F401  (part of the test install: pip install -e '.[test]'; missing fails here)

        env = dict(os.environ, TRITON_INTERPRET="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider", "-x"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        summary = proc.stdout.splitlines()[-1]
        assert " passed" in summary and "skipped" not in summary, proc.stdout[-2000:]

    return run


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared`` folder beside this checkout (real tokenizers in ``tokenizers/``, data files in
    ``data/``). The README's test command runs in that layout, so a missing folder fails the tests using it."""
    if not SHARED.is_dir():
        pytest.fail(
            f"{SHARED} is missing: it is the read-only folder of real tokenizers (tokenizers/llama3, ...) and "
            "data files (data/...) that sits beside the tunesmith checkout; the tests that read it cannot run"
        )
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


@pytest.fixture(scope="session")
def tiny_llama_dir(default_model_path, tmp_path_factory) -> Path:
    """A tiny random-init Llama (``_models.TINY``, 2,048 positions) with the real SmolLM2 tokenizer, as a
    transformers folder."""
    from _models import write_tiny_model
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    folder = tmp_path_factory.mktemp("tiny-llama")
    return write_tiny_model(
        folder, tokenizer=tokenizer, tie_word_embeddings=True, max_position_embeddings=2048
    )


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
