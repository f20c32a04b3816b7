"""The embedded default loads by alias, by .gguf path and from its cached folder, and all three agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tunesmith.models.gguf_cache import FINGERPRINT_FILE, cache_dir_for
from tunesmith.models.loader import load
from tunesmith.models.registry import ALIASES
from tunesmith.models.sources import alias_gguf_path

QUESTION = "What are common causes of fatigue?"


def greedy_answer(model, tokenizer, new_tokens: int = 12) -> str:
    """The greedy continuation of QUESTION in the model's chat template."""
    messages = [{"role": "user", "content": QUESTION}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def alias_answer(default_model_path) -> str:
    model, tokenizer = load("smollm2-135m-instruct")
    return greedy_answer(model, tokenizer)


def test_alias_loads_the_real_pretrained_smollm2(default_model_path, alias_answer):
    model, tokenizer = load("smollm2-135m-instruct", max_seq_length=512)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert model.max_seq_length == 512 and tokenizer.model_max_length == 512
    assert "<|im_start|>" in tokenizer.chat_template
    # The untouched SmolLM2-135M-Instruct's greedy answer: proof these are the real pretrained weights.
    assert alias_answer.startswith("Fatigue is a complex condition")


def test_gguf_marker_is_cleared_so_the_model_saves_and_trains(tmp_path):
    model, tokenizer = load("smollm2-135m-instruct")
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path)  # raises "not serializable" while the GGUF marker is set
    assert (tmp_path / "model.safetensors").is_file()


def test_cached_folder_gives_the_same_greedy_answer(default_model_path, alias_answer):
    model, tokenizer = load(default_model_path)
    assert greedy_answer(model, tokenizer) == alias_answer


def test_second_alias_load_reuses_the_cache(default_model_path):
    weights = default_model_path / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns)
    stamp = (default_model_path / FINGERPRINT_FILE).read_text()
    load("smollm2-135m-instruct")
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before
    assert (default_model_path / FINGERPRINT_FILE).read_text() == stamp


def test_gguf_path_converts_once_across_processes_and_rebuilds_when_the_file_changes(tmp_path, alias_answer):
    # The ranks of `tunesmith run --gpus 2` ask for the same uncached file at the same moment.
    gguf = tmp_path / "shared.gguf"
    shutil.copyfile(alias_gguf_path(ALIASES["smollm2-135m-instruct"]), gguf)
    script = (
        "import sys; from tunesmith.models.loader import load; "
        "model, _ = load(sys.argv[1]); print(model.config.num_hidden_layers)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(gguf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read().decode(), p.stderr.read().decode()) for p in procs]
    for code, out, err in results:
        assert code == 0 and out.strip() == "30", err[-2000:]
    assert sum("converting shared.gguf once" in err for _, _, err in results) == 1

    cache = cache_dir_for(gguf)
    weights = cache / "model.safetensors"
    first = weights.stat().st_ino
    model, tokenizer = load(str(gguf))
    assert weights.stat().st_ino == first, "an unchanged source must reuse the cached conversion"
    assert greedy_answer(model, tokenizer) == alias_answer

    stamp = gguf.stat().st_mtime_ns + 5_000_000_000
    os.utime(gguf, ns=(stamp, stamp))
    model, tokenizer = load(gguf)
    assert weights.stat().st_ino != first, "a changed source must be converted again"
    assert json.loads((cache / FINGERPRINT_FILE).read_text())["mtime_ns"] == stamp
    assert greedy_answer(model, tokenizer) == alias_answer
    assert not [p.name for p in cache.parent.iterdir() if p.name.startswith(".")], (
        "no half-written folders left"
    )
    shutil.rmtree(cache)
