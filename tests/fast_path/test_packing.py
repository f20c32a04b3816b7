"""Packing without padding: a packed row trains exactly like its samples one by one."""

from __future__ import annotations

import pytest
import torch
from _models import ODD, tiny_model, with_lora

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path import packing
from tunesmith.fast_path.packing import (
    PACKED_SDPA,
    causal_attention_by_products,
    has_restarts,
    pack_without_padding,
    packed_attention,
    packed_causal_mask,
    packed_sdpa_forward,
    sample_lengths,
)
from tunesmith.fast_path.patch import apply_fast_path, unpatch

SAMPLES = [[5, 17, 3, 88, 41, 9, 60], [12, 7, 33, 2, 71], [90, 4, 4]]


def _one_by_one_loss(model) -> torch.Tensor:
    """Token-weighted mean loss of the samples run separately (what packing must reproduce)."""
    total, count = 0.0, 0
    for sample in SAMPLES:
        x = torch.tensor(sample)[None]
        total = total + model(input_ids=x, labels=x).loss * (len(sample) - 1)
        count += len(sample) - 1
    return total / count


def test_pack_without_padding_restarts_positions_and_hides_sample_starts():
    batch = pack_without_padding(SAMPLES)
    assert batch["input_ids"].shape == (1, 15)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 0, 1, 2]
    assert [i for i, v in enumerate(batch["labels"][0].tolist()) if v == IGNORE_INDEX] == [0, 7, 12]
    with pytest.raises(ValueError, match="empty"):
        pack_without_padding([[1, 2], []])


def test_mask_keeps_each_token_inside_its_own_sample():
    pos = pack_without_padding(SAMPLES)["position_ids"]
    mask = packed_causal_mask(pos)[0, 0]
    assert has_restarts(pos) and not has_restarts(torch.arange(6)[None])
    assert (
        mask[8, 7] and mask[8, 8] and not mask[8, 6] and not mask[7, 9]
    )  # sample 2 sees only itself, causally
    assert mask.sum() == sum(n * (n + 1) // 2 for n in map(len, SAMPLES))


def test_packed_row_gives_the_same_loss_and_gradients_as_separate_samples():
    model = with_lora(tiny_model(**ODD)).train()
    want = _one_by_one_loss(model)
    want_grads = torch.autograd.grad(want, [p for p in model.parameters() if p.requires_grad])
    apply_fast_path(model)
    got = model(**pack_without_padding(SAMPLES)).loss
    got_grads = torch.autograd.grad(got, [p for p in model.parameters() if p.requires_grad])
    assert abs(got.item() - want.item()) < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(got_grads, want_grads, strict=True)) < 1e-5
    unpatch(model)


def test_sample_by_sample_attention_gives_the_block_mask_result_and_gradients():
    pos = pack_without_padding(SAMPLES)["position_ids"]
    assert sample_lengths(pos) == [7, 5, 3] and sample_lengths(torch.arange(6)[None]) is None
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 15, 8, generator=generator, requires_grad=True) for h in (4, 2, 2))
    module = torch.nn.Module()
    got, _ = packed_sdpa_forward(module, q, k, v, None, scaling=0.3, position_ids=pos)
    grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=packed_causal_mask(pos), scale=0.3, enable_gqa=True
    ).transpose(1, 2)
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    assert got.shape == (1, 15, 4, 8) and (got - want).abs().max() < 1e-5
    assert max((a - b).abs().max().item() for a, b in zip(grads, want_grads, strict=True)) < 1e-5


def test_packed_attention_trains_a_cpu_model_sample_by_sample_and_gives_sdpa_back():
    model = with_lora(tiny_model(**ODD)).train()
    core = model.get_base_model()
    want = _one_by_one_loss(model)
    seen = []
    core.model.layers[0].self_attn.register_forward_hook(
        lambda *_: seen.append(core.config._attn_implementation)
    )
    with packed_attention(model):
        got = model(**pack_without_padding(SAMPLES)).loss
    assert seen[-1] == PACKED_SDPA and core.config._attn_implementation == "sdpa"
    assert abs(got.item() - want.item()) < 1e-5


def test_a_local_layer_keeps_its_window_inside_a_packed_row():
    # Gemma 3 with a window of 4 on every second layer: the 7- and 5-token samples reach past it
    model = tiny_model(
        "gemma3_text", **ODD, head_dim=16, query_pre_attn_scalar=12, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    model = with_lora(model).train()
    want = _one_by_one_loss(model)
    with packed_attention(model):  # without a cache, as TRL trains: transformers' masks then see the samples
        got = model(**pack_without_padding(SAMPLES), use_cache=False).loss
    assert abs(got.item() - want.item()) < 1e-5


def _relative_errors(got, want) -> list[float]:
    return [((a.float() - b).norm() / b.norm()).item() for a, b in zip(got, want, strict=True)]


def test_attention_by_products_in_bf16_is_as_close_to_float32_as_sdpa_in_bf16():
    # the embedded model's heads: 9 query heads over 3 key/value heads of width 64
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 200, 64, generator=generator) for h in (9, 3, 3))
    grad_out = torch.randn(1, 9, 200, 64, generator=generator)

    def run(attend, dtype):
        inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = attend(*inputs)
        return [out, *torch.autograd.grad(out, inputs, grad_out.to(dtype))]

    def sdpa(*qkv):
        return torch.nn.functional.scaled_dot_product_attention(
            *qkv, is_causal=True, scale=0.125, enable_gqa=True
        )

    want = [x.float() for x in run(sdpa, torch.float32)]
    ours = _relative_errors(run(lambda *qkv: causal_attention_by_products(*qkv, 0.125), torch.bfloat16), want)
    theirs = _relative_errors(run(sdpa, torch.bfloat16), want)
    assert max(ours) < 1e-2, ours  # output, then the query's, key's and value's gradients
    assert all(a <= 1.5 * b for a, b in zip(ours, theirs, strict=True)), (ours, theirs)


def test_under_cpu_bf16_autocast_short_samples_attend_through_products(monkeypatch):
    pos = pack_without_padding(SAMPLES)["position_ids"]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 15, 16, generator=generator, requires_grad=True) for h in (4, 2, 2))
    lengths = []

    def spy(query, *rest):
        lengths.append(query.shape[2])
        return causal_attention_by_products(query, *rest)

    monkeypatch.setattr(packing, "causal_attention_by_products", spy)
    monkeypatch.setattr(packing, "PRODUCTS_MAX_TOKENS", 6)  # the 7-token sample stays on SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = packed_sdpa_forward(torch.nn.Module(), q, k, v, None, scaling=0.25, position_ids=pos)
    got_grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=packed_causal_mask(pos), scale=0.25, enable_gqa=True
    ).transpose(1, 2)
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    assert lengths == [5, 3] and got.dtype == torch.bfloat16
    assert max(_relative_errors([got, *got_grads], [want, *want_grads])) < 2e-2
    lengths.clear()
    packed_sdpa_forward(torch.nn.Module(), q, k, v, None, scaling=0.25, position_ids=pos)
    assert lengths == []  # float32 without autocast: SDPA's kernel, exact
