"""Training on a CPU under bf16 autocast with one bf16 copy of each frozen weight: LoRA layers through one
fused function, the same loss and adapter gradients as PEFT's own layers, and the model given back as it was."""

from __future__ import annotations

import torch
from _models import rel_err, tiny_model, with_lora
from peft import get_peft_model_state_dict

from tunesmith.fast_path.cpu_autocast import CpuLoRALinear, cpu_autocast_training
from tunesmith.fast_path.patch import apply_cpu_path

IDS = torch.tensor([[5, 17, 3, 88, 41, 9, 60, 12, 7, 33, 2, 71]])


def _loss_and_grads(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=IDS, labels=IDS).loss
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return loss, dict(zip([n for n, _ in named], grads, strict=True))


def test_lora_layers_under_cpu_autocast_give_pefts_loss_and_gradients_and_come_back():
    model = with_lora(tiny_model()).train()
    apply_cpu_path(model, smart_checkpointing=False)
    head = model.get_base_model().lm_head
    keys = list(model.state_dict())
    want_loss, want = _loss_and_grads(model)
    with cpu_autocast_training(model, torch.bfloat16):
        fused = [m for m in model.modules() if isinstance(m, CpuLoRALinear)]
        assert (
            len(fused) == 7 * 2 and head.frozen_copy.dtype == torch.bfloat16
        )  # every projection of 2 layers
        assert list(model.state_dict()) == keys  # checkpoints inside training see the same names
        assert len(get_peft_model_state_dict(model)) == 7 * 2 * 2  # and PEFT saves every adapter (A and B)
        got_loss, got = _loss_and_grads(model)
    assert abs(got_loss.item() - want_loss.item()) / want_loss.item() < 2e-3
    assert got.keys() == want.keys() and max(rel_err(got[n], want[n]) for n in want) < 2e-2
    assert not any(isinstance(m, CpuLoRALinear) for m in model.modules()) and head.frozen_copy is None


def test_without_autocast_nothing_changes():
    model = with_lora(tiny_model()).train()
    with cpu_autocast_training(model, None):
        assert not any(isinstance(m, CpuLoRALinear) for m in model.modules())
