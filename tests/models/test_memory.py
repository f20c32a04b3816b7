"""Will the weights fit? The size counted from the config before loading, and the refusal when they do not."""

from __future__ import annotations

import pytest
import torch
from _models import write_tiny_model

from tunesmith.errors import TunesmithError
from tunesmith.models.loader import _checked_config, load
from tunesmith.models.memory import require_room_for_weights, weight_bytes


def _unique_bytes(model) -> int:
    params = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    return sum(params.values()) + sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["fp32", "4bit"])
def test_the_count_before_loading_is_what_the_loaded_model_holds(default_model_path, load_in_4bit):
    model, _ = load(default_model_path, load_in_4bit=load_in_4bit)
    counted = weight_bytes(model.config, torch.float32, load_in_4bit=load_in_4bit).total
    # 4-bit: the packed weights are parameters; their per-block scales (counted too) are not
    assert abs(counted - _unique_bytes(model)) / _unique_bytes(model) < (0.03 if load_in_4bit else 1e-6)
    if load_in_4bit:
        assert counted < 0.45 * weight_bytes(model.config, torch.float32).total  # 4-bit saves what it should


def test_weights_too_large_for_the_device_are_refused_before_loading_with_the_way_out(default_model_path):
    config, _ = _checked_config(default_model_path, False)
    with pytest.raises(TunesmithError) as err:
        require_room_for_weights(
            config, default_model_path, torch.float32, torch.device("cpu"), free_bytes=10**8
        )
    text = str(err.value)
    assert "does not fit: its weights need about 0.5 GB in float32" in text
    assert "has 0.1 GB free" in text and str(default_model_path) in text
    assert "load_in_4bit=True (about 0.2 GB)" in text  # the cheaper way, with what it would need


def test_a_4bit_mixture_of_experts_is_told_that_its_experts_load_in_16_bit(tmp_path):
    """The room asked for is the load's: the experts are read in 16-bit and quantized afterwards."""
    folder = write_tiny_model(tmp_path / "moe", "qwen3_moe", num_experts=64, moe_intermediate_size=64)
    config, _ = __import__("tunesmith.models.loader", fromlist=["_checked_config"])._checked_config(
        folder, False
    )
    need = weight_bytes(config, torch.bfloat16, load_in_4bit=True)
    assert need.unquantized_experts == 2 * 64 * 3 * 64 * 64 * 2  # two layers' experts, in bf16
    with pytest.raises(TunesmithError, match="the experts load in 16-bit, 0.0 GB of it, and become 4-bit"):
        require_room_for_weights(config, folder, torch.bfloat16, torch.device("cpu"), load_in_4bit=True,
                                 free_bytes=need.total - 1)  # fmt: skip


def test_load_checks_the_room_before_reading_any_weight(default_model_path, monkeypatch):
    """Through ``load`` itself: a machine with too little memory gets the refusal, not a half-done load."""
    import tunesmith.models.loader as loader
    from tunesmith.models import memory

    monkeypatch.setattr(memory, "available_host_bytes", lambda: 10**6)
    monkeypatch.setattr(loader, "_load_model", lambda *a: pytest.fail("the weights were read"))
    with pytest.raises(TunesmithError, match="does not fit"):
        load(default_model_path, device_map="cpu")
