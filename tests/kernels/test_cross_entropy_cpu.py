"""The fused cross-entropy on a CPU: chunks of logits in PyTorch ops, gradients computed with the loss,
against transformers' full-logits loss."""

from __future__ import annotations

import pytest
import torch

from tunesmith.constants import IGNORE_INDEX
from tunesmith.kernels import fused_linear_cross_entropy as flce


def _case(n=11, h=24, v=97, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=generator)
    weight = torch.randn(v, h, generator=generator) / h**0.5
    labels = torch.randint(0, v, (n,), generator=generator)
    labels[[0, 4, 5]] = IGNORE_INDEX  # a prompt's tokens, masked out of the loss
    return hidden, weight, labels


@pytest.mark.parametrize("num_items", [None, 20])
@pytest.mark.parametrize("chunk_tokens", [3, 1024])
def test_cpu_chunks_give_the_full_logits_loss_and_gradients(num_items, chunk_tokens):
    hidden, weight, labels = _case()
    want_h, want_w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    want = flce.fused_linear_cross_entropy_reference(want_h, want_w, labels, None, IGNORE_INDEX, num_items)
    want.backward()
    loss, grad_h, grad_w = flce.fused_linear_cross_entropy_forward(
        hidden,
        weight,
        labels,
        None,
        IGNORE_INDEX,
        num_items,
        need_weight_grad=True,
        chunk_tokens=chunk_tokens,
    )
    assert abs(loss.item() - want.item()) < 1e-5
    assert (grad_h - want_h.grad).abs().max() < 1e-6
    assert (grad_w - want_w.grad).abs().max() < 1e-6


def test_cpu_autograd_path_matches_under_bf16_autocast():
    hidden, weight, labels = _case(n=40, h=64, v=300, seed=1)
    got_h, want_h = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = flce.fused_linear_cross_entropy(got_h, weight, labels)
        want = flce.fused_linear_cross_entropy_reference(want_h, weight, labels)
    got.backward()
    want.backward()
    assert abs(got.item() - want.item()) / want.item() < 1e-2
    assert got_h.grad.dtype == torch.float32  # the gradient reaches the float32 hidden states as such
    assert (got_h.grad - want_h.grad).norm() / want_h.grad.norm() < 2e-2


def test_a_batch_with_no_counted_token_has_loss_zero_not_nan():
    hidden, weight, labels = _case()
    hidden.requires_grad_()
    loss = flce.fused_linear_cross_entropy(hidden, weight, torch.full_like(labels, IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and not hidden.grad.abs().any()


@pytest.mark.parametrize(("vocab", "tokens"), [(128_256, 1024), (151_936, 768), (262_208, 384), (10**9, 1)])
def test_a_chunks_logits_stay_within_the_same_memory_whatever_the_vocabulary(vocab, tokens):
    """Gemma's 262k-word vocabulary gets fewer tokens per chunk than Llama 3's, not twice the memory."""
    from tunesmith.kernels.fused_linear_cross_entropy import CHUNK_LOGITS_BYTES, chunk_tokens_for

    assert chunk_tokens_for(vocab) == tokens
    assert tokens * vocab * 2 <= CHUNK_LOGITS_BYTES or tokens == 1
