"""Fused linear cross-entropy vs full logits + ``cross_entropy``: loss, hidden and weight gradients."""

from __future__ import annotations

import pytest
import torch
from _models import DTYPES, TOL, rel_err

from tunesmith.constants import IGNORE_INDEX
from tunesmith.kernels import fused_linear_cross_entropy as flce


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_items", [None, 50], ids=["mean", "num_items_in_batch"])
def test_matches_reference_across_chunks(monkeypatch, dtype, num_items):
    # 37 tokens: five chunks of 8 rows of 101 logits, the last one partial
    monkeypatch.setattr(flce, "CHUNK_LOGITS_BYTES", 8 * 101 * torch.tensor([], dtype=dtype).element_size())
    monkeypatch.setattr(flce, "BLOCK_V", 32)  # 101 columns: four vocabulary blocks, the last one partial
    h = torch.randn(37, 24, dtype=dtype, requires_grad=True)
    w = (0.3 * torch.randn(101, 24)).to(dtype).requires_grad_()
    y = torch.randint(0, 101, (37,))
    y[[3, 10, 36]] = IGNORE_INDEX
    loss = flce.FusedLinearCrossEntropyFunction.apply(h, w, y, None, IGNORE_INDEX, num_items)
    ref = flce.fused_linear_cross_entropy_reference(h, w, y, None, IGNORE_INDEX, num_items)
    got, want = torch.autograd.grad(loss, (h, w)), torch.autograd.grad(ref, (h, w))
    assert abs(loss.item() - ref.item()) / ref.item() < TOL[dtype]
    assert rel_err(got[0], want[0]) < TOL[dtype], "hidden gradient"
    assert rel_err(got[1], want[1]) < TOL[dtype], "weight gradient"


def test_ignored_rows_get_no_gradient_and_the_mean_skips_them():
    h = torch.randn(6, 16, requires_grad=True)
    w = torch.randn(40, 16)
    y = torch.tensor([1, IGNORE_INDEX, 2, IGNORE_INDEX, 3, 4])
    loss = flce.FusedLinearCrossEntropyFunction.apply(h, w, y, None, IGNORE_INDEX, None)
    (dh,) = torch.autograd.grad(loss, h)
    assert dh[1].abs().max() == 0 and dh[3].abs().max() == 0
    assert abs(loss.item() - flce.fused_linear_cross_entropy_reference(h, w, y).item()) < 1e-5
