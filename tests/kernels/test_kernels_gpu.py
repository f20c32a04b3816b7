"""Full-size kernels and the exactness targets of issue 6, on a CUDA GPU (skipped without one).

Exactness: with the fast path the per-step loss stays within 0.5% and every LoRA gradient within
2e-2 relative error of plain transformers + PEFT on the same weights and batch, in bf16, for LoRA and
QLoRA (NF4 with double quantization).
"""

from __future__ import annotations

import pytest
import torch
from _kernel_models import TARGETS, rel_err

pytestmark = pytest.mark.gpu
BF16_TOL = 1e-2  # bf16 operands: METHOD.md's 1e-3 .. 1e-2 band


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
    y[::7] = -100
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
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    from tunesmith.kernels.nf4 import nf4_dequantize_forward

    for nested in (True, False):
        w = torch.randn(14336, 4096, device="cuda", dtype=torch.bfloat16)
        packed, state = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
        assert torch.equal(nf4_dequantize_forward(packed, state), bnb_f.dequantize_4bit(packed, state))


def _load(path, qlora: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = dict(dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
    if qlora:
        kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                       bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)  # fmt: skip
    m = AutoModelForCausalLM.from_pretrained(path, **kw)
    m = get_peft_model(m, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    gen = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():  # the same adapter weights in every load (PEFT draws lora_A from the global RNG)
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, device="cuda", generator=gen, dtype=p.dtype) * 0.02)
    m.train()
    return m


def _train(m, batches, steps=3):
    """Per-step losses and the first step's LoRA gradients, with AdamW."""
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses, first = [], None
    for x in batches[:steps]:
        out = m(input_ids=x, labels=x)
        out.loss.backward()
        if first is None:
            first = {n: p.grad.float().clone() for n, p in m.named_parameters() if p.requires_grad}
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses, first


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
@pytest.mark.parametrize("offload", ["none", "inputs", "attention"], ids=["no-recompute", "offloaded-checkpoints", "offloaded-attention"])  # fmt: skip
def test_exactness_against_transformers_peft(tmp_path, monkeypatch, write_tiny_llama, qlora, offload):
    if qlora:
        pytest.importorskip("bitsandbytes")
    from tunesmith.fast_path import checkpointing
    from tunesmith.fast_path.patch import apply_fast_path
    from tunesmith.fast_path.offload import HostEmbedding

    if offload == "attention":  # keep the attention result from 1,024 tokens on, not only from 8,192
        monkeypatch.setattr(checkpointing, "KEEP_ATTENTION_MIN_TOKENS", 512)
    path = write_tiny_llama(tmp_path, None, torch.bfloat16, vocab_size=32000, hidden_size=1024,
                            intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                            num_key_value_heads=4, max_position_embeddings=4096)  # fmt: skip
    gen = torch.Generator(device="cuda").manual_seed(2)
    batches = [torch.randint(0, 32000, (2, 1024), device="cuda", generator=gen) for _ in range(3)]
    ref_losses, ref_grads = _train(_load(path, qlora), batches)
    torch.cuda.empty_cache()
    m = _load(path, qlora)
    lean = offload != "none"
    assert apply_fast_path(m, max_memory_gb=0.01 if lean else None, offload=lean)
    losses, grads = _train(m, batches)
    checkpointing = m.__dict__["_tunesmith_fast_path"].checkpointing
    plan = checkpointing.last_plan
    assert plan.offload == lean and plan.checkpointed == (4 if lean else 0)
    assert checkpointing.keep_attention == (offload == "attention")
    assert isinstance(m.get_base_model().model.embed_tokens, HostEmbedding) == lean
    for got, want in zip(losses, ref_losses, strict=True):
        assert abs(got - want) / abs(want) < 5e-3, (losses, ref_losses)
    errs = {n: rel_err(grads[n], ref_grads[n]) for n in ref_grads}
    assert max(errs.values()) < 2e-2, sorted(errs.items(), key=lambda kv: -kv[1])[:5]
