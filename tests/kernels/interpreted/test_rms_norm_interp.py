"""RMSNorm kernel vs transformers-style reference: output, input gradient, weight gradient."""

from __future__ import annotations

import pytest
import torch
from _models import DTYPES, TOL, rel_err

from tunesmith.kernels.rms_norm import RMSNormFunction, rms_norm_reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 67), (1, 1, 128), (37, 48)])
def test_rms_norm_matches_reference(shape, dtype):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * torch.randn(shape[-1])).to(dtype).requires_grad_()
    y, ref = RMSNormFunction.apply(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)
    dy = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(ref, (x, w), dy)
    assert rel_err(y, ref) < TOL[dtype]
    assert rel_err(got[0], want[0]) < TOL[dtype], "input gradient"
    assert rel_err(got[1], want[1]) < TOL[dtype], "weight gradient"


def test_frozen_weight_gets_no_gradient_and_input_is_untouched():
    x = torch.randn(4, 33, requires_grad=True)
    before = x.detach().clone()
    w = torch.ones(33)
    y = RMSNormFunction.apply(x, w, 1e-6)
    y.sum().backward()
    assert w.grad is None and torch.equal(x.detach(), before)
