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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemma_norm_with_its_offset_weight_matches_transformers(dtype):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    norm = Gemma3RMSNorm(67, eps=1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(0.0, 0.3)  # Gemma's weights start at 0 and multiply as 1 + w
    x = torch.randn(3, 5, 67, dtype=dtype, requires_grad=True)
    y, want = RMSNormFunction.apply(x, norm.weight, 1e-6, 1.0), norm(x)
    assert rel_err(y, want) < TOL[dtype]
    assert rel_err(y, rms_norm_reference(x, norm.weight, 1e-6, 1.0)) < TOL[dtype]
    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, norm.weight), dy)
    expected = torch.autograd.grad(want, (x, norm.weight), dy)
    assert rel_err(got[0], expected[0]) < TOL[dtype], "input gradient"
    assert rel_err(got[1], expected[1]) < TOL[dtype], "weight gradient"
