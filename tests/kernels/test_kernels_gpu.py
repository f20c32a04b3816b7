"""Every kernel at full size (Llama-3-8B shapes, bf16) against its reference, on a CUDA GPU (skipped
without one); the whole fast path's exactness on a GPU is checked in tests/fast_path/test_patch_gpu.py."""

from __future__ import annotations

import pytest
import torch
from _models import rel_err

from tunesmith.constants import IGNORE_INDEX

pytestmark = pytest.mark.gpu
BF16_TOL = 1e-2  # bf16 kernels against a float32 reference


def test_rms_norm_full_size():
    from tunesmith.kernels.rms_norm import RMSNormFunction, rms_norm_reference

    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (1 + 0.1 * torch.randn(4096, device="cuda")).to(torch.bfloat16).requires_grad_()
    y, r = RMSNormFunction.apply(x, w, 1e-5), rms_norm_reference(x.float(), w.float(), 1e-5)
    dy = torch.randn_like(y)
    got, want = torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(r, (x, w), dy.float())
    assert rel_err(y, r) < BF16_TOL
    assert all(rel_err(g, h) < BF16_TOL for g, h in zip(got, want, strict=True))


def test_rope_and_swiglu_full_size():
    from tunesmith.kernels.rope import RoPEFunction, rope_reference
    from tunesmith.kernels.swiglu import SwiGLUFunction, swiglu_reference

    q = torch.randn(2, 2048, 32 * 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(2, 2048, 8 * 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ang = torch.rand(1, 2048, 64, device="cuda") * 100
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(q.dtype), torch.cat([ang.sin()] * 2, -1).to(q.dtype)
    rq, rk = rope_reference(
        q.float().view(2, 2048, 32, 128), k.float().view(2, 2048, 8, 128), cos.float(), sin.float()
    )
    oq, ok = RoPEFunction.apply(q * 1, k * 1, cos, sin, 128)
    assert rel_err(oq.view_as(rq), rq) < BF16_TOL and rel_err(ok.view_as(rk), rk) < BF16_TOL
    dq, dk = torch.randn_like(oq), torch.randn_like(ok)
    got = torch.autograd.grad((oq, ok), (q, k), (dq, dk))
    want = torch.autograd.grad((rq, rk), (q, k), (dq.float().view_as(rq), dk.float().view_as(rk)))
    assert all(rel_err(a, b) < BF16_TOL for a, b in zip(got, want, strict=True))
    g = torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    u = torch.randn_like(g, requires_grad=True)
    h, ref = SwiGLUFunction.apply(g, u), swiglu_reference(g.float(), u.float())
    dh = torch.randn_like(h)
    got, want = torch.autograd.grad(h, (g, u), dh), torch.autograd.grad(ref, (g, u), dh.float())
    assert rel_err(h, ref) < BF16_TOL
    assert all(rel_err(a, b) < BF16_TOL for a, b in zip(got, want, strict=True))


def test_fused_cross_entropy_llama3_vocab():
    from tunesmith.kernels.fused_linear_cross_entropy import (
        fused_linear_cross_entropy,
        fused_linear_cross_entropy_reference,
    )

    h = (torch.randn(4096, 4096, device="cuda") * 0.5).to(torch.bfloat16).requires_grad_()
    w = (torch.randn(128256, 4096, device="cuda") * 0.02).to(torch.bfloat16)
    y = torch.randint(0, 128256, (4096,), device="cuda")
    y[::7] = IGNORE_INDEX
    torch.cuda.reset_peak_memory_stats()
    loss = fused_linear_cross_entropy(h, w, y)
    extra = torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()
    (dh,) = torch.autograd.grad(loss, h)
    ref = fused_linear_cross_entropy_reference(h, w, y)
    (rdh,) = torch.autograd.grad(ref, h)
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-3
    assert rel_err(dh, rdh) < BF16_TOL
    assert extra < 4096 * 128256 * 2 / 2, "the full logits must never exist"


def test_nf4_kernel_bit_exact_with_bitsandbytes_cuda():
    import bitsandbytes.functional as bnb_f

    from tunesmith.kernels.nf4 import nf4_dequantize_forward

    for nested in (True, False):
        w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)
        packed, state = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
        assert torch.equal(nf4_dequantize_forward(packed, state), bnb_f.dequantize_4bit(packed, state))


@pytest.mark.parametrize("rows", [1, 8, 40])
def test_lora_decode_at_llama_8b_shapes(rows):
    from tunesmith.kernels.lora_decode import lora_decode_forward, lora_decode_reference

    for n_in, n_out in ((4096, 4096), (4096, 14336), (14336, 4096)):
        x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(rows, n_out, device="cuda", dtype=torch.bfloat16)
        a = torch.randn(16, n_in, device="cuda") / n_in**0.5
        b = torch.randn(n_out, 16, device="cuda")
        want = lora_decode_reference(y.float(), x.float(), a.double().float(), b, 0.5)
        lora_decode_forward(y, x, a, b, 0.5)
        assert rel_err(y, want) < BF16_TOL
