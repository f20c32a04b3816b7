"""GeGLU kernels (Gemma's MLP) vs ``gelu(g, approximate="tanh") * u``: output, both gradients, in place."""

from __future__ import annotations

import pytest
import torch
from _models import DTYPES, TOL, rel_err

from tunesmith.kernels.geglu import GeGLUFunction, geglu_backward, geglu_reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3, 77), (2, 5, 1029)])
def test_geglu_matches_reference(shape, dtype):
    g = (3 * torch.randn(shape)).to(dtype).requires_grad_()  # wide enough to reach tanh's flat ends
    u = torch.randn(shape, dtype=dtype, requires_grad=True)
    h, ref = GeGLUFunction.apply(g, u), geglu_reference(g, u)
    dh = torch.randn_like(h)
    got, want = torch.autograd.grad(h, (g, u), dh), torch.autograd.grad(ref, (g, u), dh)
    assert rel_err(h, ref) < TOL[dtype]
    assert rel_err(got[0], want[0]) < TOL[dtype] and rel_err(got[1], want[1]) < TOL[dtype]


def test_in_place_backward_returns_h_and_gradients_in_the_input_buffers():
    g, u, dh = torch.randn(5, 300), torch.randn(5, 300), torch.randn(5, 300)
    want_h = geglu_reference(g, u)
    gg, uu = g.clone().requires_grad_(), u.clone().requires_grad_()
    want_dg, want_du = torch.autograd.grad(geglu_reference(gg, uu), (gg, uu), dh)
    bufs = (dh.clone(), g.clone(), u.clone())
    h, dg, du = geglu_backward(*bufs, in_place=True)
    assert h.data_ptr() == bufs[0].data_ptr() and dg.data_ptr() == bufs[1].data_ptr()
    assert rel_err(h, want_h) < 1e-5 and rel_err(dg, want_dg) < 1e-5 and rel_err(du, want_du) < 1e-5
