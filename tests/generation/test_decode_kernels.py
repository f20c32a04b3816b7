"""``decode_kernels``: while the graph is recorded, Llama-style norms are tunesmith's fused ones; after it, the
model is exactly as it was. On CPU the fused norm runs its reference, so the answer is unchanged."""

from __future__ import annotations

import torch

from tunesmith import FastLanguageModel
from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.generation.decode_kernels import decode_kernels


def test_swaps_every_norm_of_a_4bit_lora_model_for_the_block_only_and_keeps_the_output(tiny_llama_dir):
    model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=4)
    before = {name: type(m) for name, m in model.named_modules()}
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decode_kernels(model) as changed:
            kinds = [type(m) for m in model.modules()]
            assert kinds.count(FastRMSNorm) == 2 * 2 + 1, "two norms per layer and the final one"
            swapped = model(input_ids=ids).logits
    assert changed == 5
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert ((swapped - plain).norm() / plain.norm()).item() < 1e-5


def test_a_qwen3s_head_norms_are_swapped_too_and_the_output_is_kept():
    from _models import tiny_model

    model = tiny_model("qwen3", head_dim=16)
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decode_kernels(model) as changed:
            swapped = model(input_ids=ids).logits
    assert changed == 2 * 4 + 1, "per layer: two around the blocks and the query and key norms; the final one"
    assert type(model.model.layers[0].self_attn.q_norm).__name__ == "Qwen3RMSNorm"
    assert ((swapped - plain).norm() / plain.norm()).item() < 1e-5
