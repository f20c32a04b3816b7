"""Every bad export request gets one clear error before work starts, and nothing half-written stays behind."""

from __future__ import annotations

import errno
import sys

import pytest
from _models import tiny_model
from transformers import AutoTokenizer

import tunesmith.export._safetensors as safetensors_writer
import tunesmith.export.gguf_writer as gguf_writer
from tunesmith.errors import TunesmithError
from tunesmith.export.gguf import save_pretrained_gguf
from tunesmith.export.merge import save_pretrained_merged


def _left_behind(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_unknown_quantization_lists_the_valid_ones(model, tokenizer, tmp_path):
    with pytest.raises(
        TunesmithError, match=r"did you mean 'q4_k_m'.*f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k"
    ):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, "q4_km")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_names_itself_and_the_supported(tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(
        TunesmithError, match=r"'gpt2'.*gemma2, gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen3"
    ):
        save_pretrained_gguf(gpt2, tmp_path / "out", tokenizer)
    assert not (tmp_path / "out").exists()


def test_non_empty_folder_is_refused_unless_overwrite(model, tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TunesmithError, match="not empty.*overwrite=True"):
        save_pretrained_gguf(model, out, tokenizer, "f16")
    with pytest.raises(TunesmithError, match="not empty.*overwrite=True"):
        save_pretrained_merged(model, out, tokenizer)
    assert _left_behind(out) == ["notes.txt"]
    path = save_pretrained_gguf(model, out, tokenizer, "f16", overwrite=True)
    assert path == out / "out.F16.gguf" and path.stat().st_size > 0


@pytest.mark.parametrize("name", ["../escape", "sub/model", "a\\b", ".hidden", ""])
def test_file_name_with_path_separators_is_refused(model, tokenizer, tmp_path, name):
    with pytest.raises(TunesmithError, match="not a plain file name"):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, name=name)
    assert _left_behind(tmp_path) == []


def test_disk_full_while_writing_gguf_leaves_no_partial_file(model, tokenizer, tmp_path, monkeypatch):
    written = []

    def write_then_fill_up(writer, data):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(data.nbytes)
        writer.write_tensor_data(data)

    monkeypatch.setattr(gguf_writer, "_write_tensor", write_then_fill_up)
    out = tmp_path / "out"
    with pytest.raises(TunesmithError, match="stopped part-way: the disk is full.*Nothing half-written"):
        save_pretrained_gguf(model, out, tokenizer, "q8_0")
    assert len(written) == 3 and _left_behind(out) == []


def test_disk_full_during_k_quant_leaves_neither_file(model, tokenizer, tmp_path, monkeypatch):
    def fill_up(writer, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_writer, "_write_tensor", fill_up)
    out = tmp_path / "out"
    with pytest.raises(TunesmithError, match="stopped part-way: the disk is full"):
        save_pretrained_gguf(model, out, tokenizer, "q4_k_m")
    assert _left_behind(out) == []  # neither the 16-bit intermediate nor the target


def test_disk_full_while_merging_leaves_no_folder(model, tokenizer, tmp_path, monkeypatch):
    real = safetensors_writer._tensor_bytes
    calls = []

    def bytes_then_fill_up(tensor):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensor)

    monkeypatch.setattr(safetensors_writer, "_tensor_bytes", bytes_then_fill_up)
    with pytest.raises(TunesmithError, match="stopped part-way: the disk is full"):
        save_pretrained_merged(model, tmp_path / "merged", tokenizer)
    assert _left_behind(tmp_path) == []


def test_too_little_free_space_is_refused_before_writing(model, tokenizer, tmp_path, monkeypatch):
    import shutil

    from tunesmith.export import _output

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_output.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(TunesmithError, match="Not enough disk space.*GB is free"):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, "f16")
    assert _left_behind(tmp_path) == []


def test_modelfile_without_any_prompt_format_says_what_to_pass(model, tokenizer, tmp_path):
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    out = tmp_path / "out"
    with pytest.raises(TunesmithError, match="no chat template.*prompt_template="):
        save_pretrained_gguf(model, out, bare, modelfile=True)
    assert not out.exists()
    # Not asked for explicitly: the GGUF is written, the Modelfile skipped (with a warning).
    path = save_pretrained_gguf(model, out, bare, "f16")
    assert _left_behind(out) == [path.name]
    # With the declared prompt template it works.
    save_pretrained_gguf(
        model, out, bare, "f16", prompt_template="Q: {instruction}\nA: {output}", overwrite=True
    )
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()


def test_k_quant_without_llama_cpp_names_the_extra(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(
        TunesmithError, match=r'-mno-amx-int8" pip install --no-cache-dir "tunesmith\[verify\]"'
    ):
        save_pretrained_gguf(model, tmp_path / "out", tokenizer, "q4_k_m")
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_is_explained(model, tmp_path):
    with pytest.raises(TunesmithError, match="needs the tokenizer"):
        save_pretrained_gguf(model, tmp_path / "out")


def test_tokenizer_larger_than_the_embedding_is_refused(tokenizer, tmp_path):
    small = tiny_model(vocab_size=1000)
    with pytest.raises(TunesmithError, match="resize_token_embeddings"):
        save_pretrained_gguf(small, tmp_path / "out", tokenizer)
    assert not (tmp_path / "out").exists()


def test_pure_python_types_write_what_they_say(model, tokenizer, tmp_path):
    import gguf

    for quant, expected in (("bf16", "BF16"), ("q4_0", "Q4_0"), ("f32", "F32")):
        path = save_pretrained_gguf(model, tmp_path / quant, tokenizer, quant, modelfile=False)
        reader = gguf.GGUFReader(path)
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == expected and types["blk.0.attn_norm.weight"] == "F32"


def test_verify_right_after_export(model, tokenizer, tmp_path, capsys, llama_cpp_works):
    path = save_pretrained_gguf(model, tmp_path / "out", tokenizer, "f32", verify=True)
    assert path.is_file() and "PASS" in capsys.readouterr().out
