"""Rotary embedding kernel (in place on Q and K) vs the transformers formula, forward and backward."""

from __future__ import annotations

import pytest
import torch
from _models import DTYPES, TOL, rel_err

from tunesmith.kernels.rope import RoPEFunction, rope_reference


def _angles(b, t, d, dtype, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    freqs = torch.outer(torch.arange(t).float(), inv)
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos()[None].expand(b, t, d).to(dtype), emb.sin()[None].expand(b, t, d).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", [(3, 1), (4, 4), (9, 3)], ids=["gqa3", "mha", "gqa9"])
def test_rope_matches_reference(heads, dtype):
    b, t, d = 2, 7, 10
    hq, hk = heads
    q = torch.randn(b, t, hq * d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, t, hk * d, dtype=dtype, requires_grad=True)
    cos, sin = _angles(b, t, d, dtype)
    oq, ok = RoPEFunction.apply(q * 1, k * 1, cos, sin, d)
    rq, rk = rope_reference(q.view(b, t, hq, d), k.view(b, t, hk, d), cos, sin)
    assert rel_err(oq.view_as(rq), rq) < TOL[dtype] and rel_err(ok.view_as(rk), rk) < TOL[dtype]
    gq, gk = torch.randn_like(oq), torch.randn_like(ok)
    got = torch.autograd.grad((oq, ok), (q, k), (gq, gk))
    want = torch.autograd.grad((rq, rk), (q, k), (gq.view_as(rq), gk.view_as(rk)))
    assert rel_err(got[0], want[0]) < TOL[dtype] and rel_err(got[1], want[1]) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_rotates_a_per_head_norms_own_output_as_qwen3_orders_them(dtype):
    """Qwen3 normalises each head's query and key, then rotates: the norm kernel's output is a tensor of
    its own, so the RoPE kernel rotates it in place, and both gradients match the reference chain."""
    from tunesmith.kernels.rms_norm import RMSNormFunction, rms_norm_reference

    b, t, d, hq, hk = 2, 7, 10, 3, 1
    q = torch.randn(b, t, hq * d, dtype=dtype, requires_grad=True)
    k = torch.randn(b, t, hk * d, dtype=dtype, requires_grad=True)
    w = (1 + 0.3 * torch.randn(d)).to(dtype)
    cos, sin = _angles(b, t, d, dtype)
    nq, nk = (RMSNormFunction.apply(x.view(b, t, -1, d), w, 1e-6) for x in (q, k))
    assert nq._base is None and nk._base is None
    oq, ok = RoPEFunction.apply(nq, nk, cos, sin, d)
    rq, rk = rope_reference(*(rms_norm_reference(x.view(b, t, -1, d), w, 1e-6) for x in (q, k)), cos, sin)
    assert rel_err(oq, rq) < TOL[dtype] and rel_err(ok, rk) < TOL[dtype]
    gq, gk = torch.randn_like(oq), torch.randn_like(ok)
    got = torch.autograd.grad((oq, ok), (q, k), (gq, gk))
    want = torch.autograd.grad((rq, rk), (q, k), (gq, gk))
    assert rel_err(got[0], want[0]) < TOL[dtype] and rel_err(got[1], want[1]) < TOL[dtype]
