"""``decode_kernels``: while the graph is recorded, NF4 layers and Llama-style norms are tunesmith's; after
it, the model is exactly as it was. On CPU the stand-ins run their references, so the answer is unchanged."""

from __future__ import annotations

import torch

import tunesmith.generation.decode_kernels as decode_kernels_module
from tunesmith import FastLanguageModel
from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.generation.decode_kernels import Nf4DecodeLinear, decode_kernels


def test_swaps_every_nf4_layer_and_norm_for_the_block_only_and_keeps_the_output(tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(decode_kernels_module, "NF4_KERNEL", True)
    model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=4)
    before = {name: type(m) for name, m in model.named_modules()}
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decode_kernels(model) as changed:
            kinds = [type(m) for m in model.modules()]
            assert kinds.count(Nf4DecodeLinear) == 7 * 2, "every projection of both layers"
            assert kinds.count(FastRMSNorm) == 2 * 2 + 1, "two norms per layer and the final one"
            swapped = model(input_ids=ids).logits
    assert changed >= 7 * 2 + 5  # places: a layer a PEFT wrapper also holds counts twice
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert ((swapped - plain).norm() / plain.norm()).item() < 1e-5
