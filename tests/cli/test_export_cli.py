"""``tunesmith export`` and ``tunesmith verify`` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _models import with_lora


def _tunesmith(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesmith.cli.main", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def adapter_dir(tiny_llama_dir, tmp_path_factory):
    """A LoRA adapter folder (with its tokenizer) trained on top of the tiny Llama, as training leaves it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = with_lora(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32), r=4)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    return folder


def test_export_gguf_from_an_adapter_folder_and_verify(adapter_dir, tmp_path, llama_cpp_works):
    out = tmp_path / "gguf"
    done = _tunesmith(
        "export", str(adapter_dir), "--format", "gguf", "--quant", "f32", "--out", str(out), "--verify"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "gguf.F32.gguf").is_file() and (out / "Modelfile").is_file()
    assert "PASS" in done.stdout and "tokenization identical: yes" in done.stdout
    again = _tunesmith("verify", str(out / "gguf.F32.gguf"), "--against", str(adapter_dir), "--json")
    assert again.returncode == 0, again.stderr
    assert '"passed": true' in again.stdout


def test_export_merged_and_lora_folders(adapter_dir, tmp_path):
    for fmt, expected in (("merged", "model.safetensors"), ("lora", "adapter_model.safetensors")):
        out = tmp_path / fmt
        done = _tunesmith("export", str(adapter_dir), "--format", fmt, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert (out / expected).is_file() and (out / "tokenizer.json").is_file()


def test_unknown_quant_fails_fast_with_the_valid_list(tmp_path):
    done = _tunesmith(
        "export", "no-such-model", "--format", "gguf", "--quant", "q9_k", "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2
    assert "Unknown quantization method 'q9_k'" in done.stderr and "q4_k_m" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def test_non_empty_output_folder_needs_overwrite(adapter_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    done = _tunesmith("export", str(adapter_dir), "--format", "merged", "--out", str(out))
    assert done.returncode == 2 and "not empty" in done.stderr and "--overwrite" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    done = _tunesmith("export", str(adapter_dir), "--format", "merged", "--out", str(out), "--overwrite")
    assert done.returncode == 0 and (out / "model.safetensors").is_file()


def test_verify_a_missing_file_is_a_clear_error(tmp_path):
    done = _tunesmith("verify", str(tmp_path / "nope.gguf"), "--against", str(tmp_path))
    assert done.returncode == 2 and "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_verify_exits_1_when_the_file_is_another_model(tiny_llama_dir, tmp_path, llama_cpp_works):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.gguf import save_pretrained_gguf

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():  # a different model with the same tokenizer: reshuffle its output layer
        model.lm_head.weight.copy_(model.lm_head.weight[torch.randperm(model.lm_head.weight.shape[0])])
    path = save_pretrained_gguf(model, tmp_path / "other", tokenizer, "f32", modelfile=False)
    done = _tunesmith("verify", str(path), "--against", str(tiny_llama_dir), "--max-new-tokens", "2")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "tokenization identical: yes" in done.stdout
