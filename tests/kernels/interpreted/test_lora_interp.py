"""LoRA fused into Q/K/V/O and into the SwiGLU MLP vs PEFT-style autograd references, bf16 and NF4 bases."""

from __future__ import annotations

import pytest
import torch
from _models import DTYPES, TOL, rel_err

from tunesmith.kernels.lora_linear import LoRAProjectionsFunction, Projection, lora_projections_reference
from tunesmith.kernels.lora_mlp import LoRAMLPFunction, lora_mlp_reference


def _proj(out, inp, r, dtype, bias=False, nf4=False):
    w = 0.2 * torch.randn(out, inp)
    if nf4:
        import bitsandbytes as bnb

        w = bnb.nn.Params4bit(
            w.to(dtype), requires_grad=False, quant_type="nf4", compress_statistics=True
        ).to("cpu")
    else:
        w = w.to(dtype)
    a = (0.2 * torch.randn(r, inp)).to(dtype).requires_grad_() if r else None
    b = (0.2 * torch.randn(out, r)).to(dtype).requires_grad_() if r else None
    return Projection(w, torch.randn(out).to(dtype) if bias else None, a, b, 2.0)


def _trainable(x, projections):
    return [x] + [t for p in projections for t in (p.lora_a, p.lora_b) if t is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nf4", [False, True], ids=["bf16-base", "nf4-base"])
def test_qkv_projections_match_reference(dtype, nf4):
    x = torch.randn(2, 5, 24, dtype=dtype, requires_grad=True)
    ps = [
        _proj(24, 24, 4, dtype, bias=True, nf4=nf4),
        _proj(8, 24, 4, dtype, nf4=nf4),
        _proj(8, 24, 0, dtype, nf4=nf4),
    ]
    flat = [t for p in ps for t in (p.weight, p.bias, p.lora_a, p.lora_b)]
    outs = LoRAProjectionsFunction.apply(x, [p.scaling for p in ps], *flat)
    refs = lora_projections_reference(x, ps)
    assert all(rel_err(o, r) < TOL[dtype] for o, r in zip(outs, refs, strict=True))
    gs = [torch.randn_like(o) for o in outs]
    got, want = (
        torch.autograd.grad(outs, _trainable(x, ps), gs),
        torch.autograd.grad(refs, _trainable(x, ps), gs),
    )
    assert [round(rel_err(a, b), 6) for a, b in zip(got, want, strict=True)] == pytest.approx(
        [0] * len(got), abs=TOL[dtype]
    )


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nf4", [False, True], ids=["bf16-base", "nf4-base"])
def test_mlp_matches_reference(dtype, nf4, activation):
    x = torch.randn(2, 5, 24, dtype=dtype, requires_grad=True)
    ps = [
        _proj(40, 24, 4, dtype, nf4=nf4),
        _proj(40, 24, 4, dtype, nf4=nf4),
        _proj(24, 40, 4, dtype, nf4=nf4),
    ]
    flat = [t for p in ps for t in (p.weight, p.lora_a, p.lora_b)]
    out = LoRAMLPFunction.apply(x, [p.scaling for p in ps], activation, *flat)
    ref = lora_mlp_reference(x, *ps, activation=activation)
    assert rel_err(out, ref) < TOL[dtype]
    dy = torch.randn_like(out)
    got, want = (
        torch.autograd.grad(out, _trainable(x, ps), dy),
        torch.autograd.grad(ref, _trainable(x, ps), dy),
    )
    for name, a, b in zip(
        ["x", "gate.A", "gate.B", "up.A", "up.B", "down.A", "down.B"], got, want, strict=True
    ):
        assert rel_err(a, b) < TOL[dtype], name
