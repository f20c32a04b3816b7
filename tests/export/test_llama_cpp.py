"""llama.cpp runs in a child process: a native crash there (injected: the child kills itself with SIGSEGV)
becomes one clear error, and the caller's process, its model and the exported files all survive."""

from __future__ import annotations

import os
import signal

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.export._llama_cpp_child import FAULT_ENV
from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.llama_cpp import REBUILD_COMMAND, LlamaCppCrashed, self_test
from tunesmith.export.verify import verify_gguf
from tunesmith.models.registry import ALIASES, DEFAULT_MODEL
from tunesmith.models.sources import alias_gguf_path


@pytest.fixture
def crashing_llama_cpp(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "segv")


def test_self_test_decodes_a_batch_of_the_built_in_model(llama_cpp_works):
    result = self_test(alias_gguf_path(ALIASES[DEFAULT_MODEL]))
    assert result["batch_tokens"] >= 5


def test_a_crash_is_one_clear_error_with_the_signal_and_the_rebuild(llama_cpp_works, crashing_llama_cpp):
    with pytest.raises(LlamaCppCrashed) as caught:
        self_test(alias_gguf_path(ALIASES[DEFAULT_MODEL]))
    assert caught.value.signal_number == signal.SIGSEGV
    message = str(caught.value)
    assert "crashed with signal 11 (SIGSEGV)" in message and REBUILD_COMMAND in message
    assert "\n" not in message  # one paragraph


def test_verify_after_export_survives_the_crash_and_keeps_the_file(
    model, tokenizer, tmp_path, llama_cpp_works, crashing_llama_cpp
):
    with pytest.raises(TunesmithError, match=r"verifying m\.F16\.gguf: it crashed with signal 11"):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, "f16", name="m", verify=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["Modelfile", "m.F16.gguf"]
    os.environ.pop(FAULT_ENV)  # llama.cpp works again: the same file verifies, in this same process
    assert verify_gguf(tmp_path / "out" / "m.F16.gguf", (model, tokenizer), max_new_tokens=2).passed


def test_k_quant_crash_leaves_no_partial_file(
    model, tokenizer, tmp_path, llama_cpp_works, crashing_llama_cpp
):
    with pytest.raises(LlamaCppCrashed, match="quantizing"):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, "q4_k_m", modelfile=False)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_a_file_that_is_not_gguf_is_named_before_any_model_loads(tmp_path, llama_cpp_works):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(TunesmithError, match=r"fake\.gguf is not a readable GGUF file"):
        verify_gguf(fake, against=tmp_path / "no-model-here")


def test_the_readme_installs_llama_cpp_the_way_that_runs_here():
    from pathlib import Path

    from tunesmith.export.llama_cpp import LLAMA_CPP_CMAKE_ARGS

    repo = Path(__file__).resolve().parents[2]
    for readme in ("README.md", "README.zh.md"):
        installs = [line for line in (repo / readme).read_text().splitlines() if "pip install torch" in line]
        installs += [line for line in (repo / readme).read_text().splitlines() if ' -e ".[' in line]
        assert installs, readme
        for line in installs:
            assert line.startswith(f'CMAKE_ARGS="{LLAMA_CPP_CMAKE_ARGS}" pip install --no-cache-dir'), line
    assert "PIP_NO_CACHE_DIR=1" in (repo / ".ci" / "run").read_text()
