"""``decode_kernels``: while the graph is recorded, Llama-style norms, attentions and MLPs are tunesmith's
decode modules; after it, the model is exactly as it was. On CPU the modules run their references, so a
decode step's logits are the model's own."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from _models import rel_err, tiny_model, with_lora

from tunesmith import FastLanguageModel
from tunesmith.fast_path.modules import FastRMSNorm
from tunesmith.fast_path.patch import apply_fast_path
from tunesmith.generation.decode_kernels import decode_kernels
from tunesmith.generation.decode_modules import DecodeAttention, DecodeMLP
from tunesmith.generation.static_decoder import StaticDecoder
from tunesmith.models.unwrap import base_model_of


def test_swaps_every_norm_attention_and_mlp_of_a_4bit_lora_model_for_the_block_only(tiny_llama_dir):
    model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=4)
    before = {name: type(m) for name, m in model.named_modules()}
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decode_kernels(model) as changed:
            kinds = [type(m) for m in model.modules()]
            assert kinds.count(FastRMSNorm) == 2 * 2 + 1, "two norms per layer and the final one"
            assert kinds.count(DecodeAttention) == kinds.count(DecodeMLP) == 2
            swapped = model(input_ids=ids).logits  # three tokens: the wrapped modules' own path
    assert changed == 5 + 2 * 2
    assert {name: type(m) for name, m in model.named_modules()} == before
    assert ((swapped - plain).norm() / plain.norm()).item() < 1e-5


def test_a_qwen3s_head_norms_are_swapped_too_and_the_output_is_kept():
    model = tiny_model("qwen3", head_dim=16)
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with decode_kernels(model) as changed:
            swapped = model(input_ids=ids).logits
    assert changed == 2 * 4 + 1 + 2 * 2, "per layer: four norms, the attention and the MLP; the final norm"
    assert type(model.model.layers[0].self_attn.q_norm).__name__ == "Qwen3RMSNorm"
    assert ((swapped - plain).norm() / plain.norm()).item() < 1e-5


def _two_steps(model, swapped: bool) -> tuple[torch.Tensor, int]:
    """Logits of two decode steps after a left-padded prefill of two rows, and how often the model's own
    attention modules ran during those steps."""
    attentions = [layer.self_attn for layer in base_model_of(model).model.layers]
    calls = []
    hooks = [a.register_forward_hook(lambda *_: calls.append(1)) for a in attentions]
    decoder = StaticDecoder(model, 2, 16, torch.device("cpu"))
    with torch.no_grad():
        decoder.prefill(
            torch.tensor([[0, 5, 17, 42], [9, 8, 7, 6]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
        )
        calls.clear()
        with decode_kernels(model) if swapped else nullcontext():
            logits = [decoder.step(torch.tensor(t)).clone() for t in ([3, 4], [30, 40])]
    for hook in hooks:
        hook.remove()
    return torch.stack(logits), len(calls)


@pytest.mark.parametrize(
    "setting", ["llama+lora", "llama+lora+fast-path", "qwen3", "phi3+lora", "qwen3_moe+lora"]
)
def test_a_decode_step_through_the_decode_modules_gives_the_models_own_logits(setting):
    if setting == "qwen3":
        model = tiny_model("qwen3", head_dim=16)
    else:
        model = with_lora(tiny_model(setting.split("+")[0]))
    if "fast-path" in setting:
        apply_fast_path(model)
    plain, plain_calls = _two_steps(model, swapped=False)
    fused, fused_calls = _two_steps(model, swapped=True)
    assert plain_calls == 2 * 2 and fused_calls == 0, "the swapped steps never ran the model's own attention"
    assert rel_err(fused, plain) < 1e-5
