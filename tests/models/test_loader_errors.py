"""Every bad input to the loader stops with one clear paragraph that names what is wrong."""

from __future__ import annotations

import shutil

import gguf
import numpy as np
import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.loader import load
from tunesmith.models.registry import ALIASES, Alias
from tunesmith.models.sources import alias_gguf_path

needs_no_gpu = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the error on a machine without CUDA"
)


@pytest.fixture(scope="module")
def real_gguf():
    return alias_gguf_path(ALIASES["smollm2-135m-instruct"])


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(TunesmithError, match="does not exist") as err:
        load(str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(TunesmithError, match="does not exist"):
        load("no-such-file.gguf")


def test_folder_without_config_json(tmp_path):
    with pytest.raises(TunesmithError, match="no config.json") as err:
        load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_with_only_a_gguf_points_at_the_file(tmp_path):
    (tmp_path / "model-q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(TunesmithError, match="model-q8_0.gguf"):
        load(tmp_path)


@pytest.mark.parametrize("keep", [5_000, 40_000_000], ids=["header-only", "half-the-tensors"])
def test_truncated_gguf(tmp_path, real_gguf, keep):
    broken = tmp_path / "broken.gguf"
    with open(real_gguf, "rb") as source:
        broken.write_bytes(source.read(keep))
    with pytest.raises(TunesmithError, match="truncated or corrupt") as err:
        load(broken)
    assert str(broken) in str(err.value)


def test_corrupt_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(TunesmithError, match="not a readable GGUF file"):
        load(junk)


def test_file_that_is_not_a_model(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(TunesmithError, match="not a GGUF file"):
        load(notes)


def test_truncated_safetensors_is_named(tmp_path, tiny_llama_dir):
    folder = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(TunesmithError, match="truncated or corrupt") as err:
        load(folder)
    assert str(weights) in str(err.value)


def test_unsupported_architecture_in_a_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(TunesmithError, match="'gpt2'") as err:
        load(tmp_path)
    assert "llama" in str(err.value) and "qwen2" in str(err.value)


def bare_gguf(path, arch: str):
    """A readable GGUF file with one tensor and no tokenizer or hyper-parameters."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_in_a_gguf(tmp_path):
    path = bare_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(TunesmithError, match="'gpt2' model") as err:
        load(path)
    assert "llama" in str(err.value)


def test_hub_id_while_offline_names_the_id():
    with pytest.raises(TunesmithError, match="hub cannot be reached") as err:
        load("some-org/some-model")
    assert "'some-org/some-model'" in str(err.value)


def test_misspelt_alias_suggests_the_alias():
    with pytest.raises(TunesmithError, match="Did you mean the built-in model 'smollm2-135m-instruct'"):
        load("smollm2-135m-instrct")


def test_missing_alias_package_gives_the_install_command():
    alias = Alias(
        "demo", package="tunesmith_absent_pkg", filename="x.gguf", install_hint="pip install demo-pkg"
    )
    with pytest.raises(TunesmithError, match="is not installed. Install it with: pip install demo-pkg"):
        alias_gguf_path(alias)


def test_4bit_and_8bit_together():
    with pytest.raises(TunesmithError, match="load_in_4bit=True and load_in_8bit=True"):
        load("smollm2-135m-instruct", load_in_4bit=True, load_in_8bit=True)


@pytest.mark.parametrize("value", [0, -3, 1.5, "2048", True])
def test_max_seq_length_below_one_or_not_a_number(value):
    with pytest.raises(TunesmithError, match=f"max_seq_length={value!r}"):
        load("smollm2-135m-instruct", max_seq_length=value)


def test_full_finetuning_with_4bit():
    with pytest.raises(TunesmithError, match="full_finetuning=True"):
        load("smollm2-135m-instruct", full_finetuning=True, load_in_4bit=True)


@needs_no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1", 0])
def test_absent_gpu_is_an_error(device):
    with pytest.raises(TunesmithError, match="asks for a CUDA GPU"):
        load("smollm2-135m-instruct", device_map=device)


def test_unknown_device_and_dtype():
    with pytest.raises(TunesmithError, match="device_map='gpu0'"):
        load("smollm2-135m-instruct", device_map="gpu0")
    with pytest.raises(TunesmithError, match="dtype='int8'"):
        load("smollm2-135m-instruct", dtype="int8")


def test_unwritable_cache_home_is_named(tmp_path, monkeypatch, real_gguf):
    not_a_folder = tmp_path / "home-is-a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("TUNESMITH_HOME", str(not_a_folder))
    with pytest.raises(TunesmithError, match="set TUNESMITH_HOME to a writable folder"):
        load(real_gguf)


def test_longer_context_than_the_model_knows_warns(tiny_llama_dir):
    with pytest.warns(UserWarning, match="max_seq_length=4096 is longer than the 2048 tokens"):
        model, _ = load(tiny_llama_dir, max_seq_length=4096)
    assert model.max_seq_length == 4096


def test_weights_missing_a_tensor_are_not_filled_with_random_values(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TunesmithError, match="model.layers.1.mlp.down_proj.weight"):
        load(folder)


def test_failed_conversion_leaves_nothing_in_the_cache(tmp_path):
    from tunesmith.models.gguf_cache import cache_dir_for

    path = bare_gguf(tmp_path / "llama-without-tokenizer.gguf", "llama")
    with pytest.raises(TunesmithError, match="could not convert .*llama-without-tokenizer.gguf"):
        load(path)
    cache = cache_dir_for(path)
    assert not cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}")]
