"""A decode step of a LoRA model with the decode modules' kernels running (interpreted): the model's own
logits, and a Llama layer's seven adapters added in four launch pairs (query, key and value share one; gate
and up share one); Phi-3's fused projections through the same kernels."""

from __future__ import annotations

import pytest
import torch
from _models import rel_err, tiny_model, with_lora

from tunesmith.generation import decode_modules
from tunesmith.generation.decode_kernels import decode_kernels
from tunesmith.generation.static_decoder import StaticDecoder


def _step_logits(model, swapped: bool) -> torch.Tensor:
    decoder = StaticDecoder(model, 2, 16, torch.device("cpu"))
    with torch.no_grad():
        decoder.prefill(
            torch.tensor([[0, 5, 17, 42], [9, 8, 7, 6]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
        )
        if not swapped:
            return decoder.step(torch.tensor([3, 4])).clone()
        with decode_kernels(model):
            return decoder.step(torch.tensor([3, 4])).clone()


@pytest.mark.parametrize(
    ("family", "launches"),
    [("llama", [3, 1, 2, 1]), ("phi3", [1, 1, 1, 1]), ("qwen3_moe", [3, 1])],
    ids=["q/k/v together, o, gate/up together, down", "Phi-3: qkv, o, gate_up, down", "Qwen3-MoE: q/k/v, o"],
)
def test_a_lora_decode_step_through_the_kernels_gives_the_models_own_logits(monkeypatch, family, launches):
    model = with_lora(tiny_model(family)).eval()
    launched = []
    kernel = decode_modules.lora_decode_group_forward

    def counted(outputs, x, adapters):
        launched.append(len(adapters))
        kernel(outputs, x, adapters)

    monkeypatch.setattr(decode_modules, "lora_decode_group_forward", counted)
    plain = _step_logits(model, swapped=False)
    fused = _step_logits(model, swapped=True)
    assert launched == launches * 2, "adapters per launch pair, layer by layer"
    assert rel_err(fused, plain) < 1e-5
