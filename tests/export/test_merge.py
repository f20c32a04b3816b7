"""Merged folders reload in plain transformers with the LoRA model's logits; adapters reload in PEFT."""

from __future__ import annotations

import json

import pytest
import torch
from _models import tiny_model, with_lora
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from tunesmith.errors import TunesmithError
from tunesmith.export.merge import merged_tensors, save_pretrained_merged

IDS = torch.tensor([[1, 5, 9, 42, 7, 100, 3, 77, 12, 200]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def test_merged_folder_reloads_with_the_lora_models_logits(tmp_path):
    model = with_lora(tiny_model(tie_word_embeddings=True))
    before = _logits(model)
    out = save_pretrained_merged(model, tmp_path / "merged", save_method="merged_16bit", dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in name for name, _ in reloaded.named_parameters())
    assert torch.allclose(_logits(reloaded), before, atol=1e-4)
    # The model in memory is untouched: merging computed copies, it did not fold the adapter in place.
    assert torch.equal(_logits(model), before)


def test_default_dtype_is_16_bit_and_close(tmp_path):
    model = with_lora(tiny_model("qwen2"))
    out = save_pretrained_merged(model, tmp_path / "merged", save_method="merged_16bit")
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "float16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert (_logits(reloaded) - _logits(model)).abs().max() < 0.02


def test_shards_and_index_follow_transformers_layout(tmp_path):
    model = with_lora(tiny_model(tie_word_embeddings=False))
    out = save_pretrained_merged(model, tmp_path / "m", max_shard_size="60KB", dtype=torch.float32)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    names = {s.name for s in merged_tensors(model)}
    assert set(index["weight_map"]) == names and "lm_head.weight" in names
    with safe_open(out / shards[0], "pt") as handle:  # readable by safetensors itself
        assert all(handle.get_tensor(k).dtype == torch.float32 for k in handle.keys())
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(_logits(reloaded), _logits(model), atol=1e-4)


def test_lora_method_writes_a_peft_adapter(tmp_path):
    from peft import PeftModel

    model = with_lora(tiny_model())
    out = save_pretrained_merged(model, tmp_path / "adapter", save_method="lora")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    reloaded = PeftModel.from_pretrained(tiny_model(), out)
    assert torch.allclose(_logits(reloaded), _logits(model), atol=1e-5)


def test_4bit_base_is_dequantized_before_merging(tmp_path):
    from transformers import BitsAndBytesConfig

    base_dir = tmp_path / "base"
    tiny_model().save_pretrained(base_dir)
    quantized = AutoModelForCausalLM.from_pretrained(
        base_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    )
    model = with_lora(quantized)
    out = save_pretrained_merged(model, tmp_path / "merged", dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    # bitsandbytes' CPU 4-bit matmul rounds differently from a dense matmul: logits ~0.4, differences ~3e-3
    assert (_logits(reloaded) - _logits(model)).abs().max() < 2e-2


def test_unknown_save_method_lists_the_valid_ones(tmp_path):
    model = with_lora(tiny_model())
    with pytest.raises(TunesmithError, match="merged_16bit, lora"):
        save_pretrained_merged(model, tmp_path / "m", save_method="merged_4bit")
    assert not (tmp_path / "m").exists()


def test_lora_method_needs_an_adapter(tmp_path):
    with pytest.raises(TunesmithError, match="has none"):
        save_pretrained_merged(tiny_model(), tmp_path / "a", save_method="lora")
    assert list(tmp_path.iterdir()) == []
