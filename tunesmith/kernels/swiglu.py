"""SwiGLU, the gated activation of Llama/Qwen2 MLPs: ``h = silu(g) * u``, elementwise.

Backward with ``s = sigmoid(g)``:  ``dg = dh * u * s * (1 + g (1 - s))``,  ``du = dh * g * s``.
The backward kernel also returns ``h`` (recomputed, never stored between passes), because the LoRA
weight gradient of ``down_proj`` needs it; with ``IN_PLACE`` it writes ``h, dg, du`` over the buffers
``dh, g, u`` it read, so the fused MLP's backward allocates nothing here.
Source: Shazeer 2020, https://arxiv.org/abs/2002.05202.
"""

import torch
import torch.nn.functional as F

from tunesmith.kernels._triton import kernel_for, on_gpu, tl, triton

__all__ = ["swiglu_forward", "swiglu_backward", "swiglu_reference", "SwiGLUFunction", "swiglu"]

# Elements per program: 16-byte vector loads of bf16 with enough work per program to hide latency.
BLOCK = 1024


@triton.jit
def _swiglu_forward_kernel(G, U, H, n, BLOCK: tl.constexpr):
    """h = silu(g) * u in float32, rounded once."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(H + offs, (g * tl.sigmoid(g) * u).to(H.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(DH, G, U, H_OUT, DG, DU, n, BLOCK: tl.constexpr):
    """1. load dh, g, u; 2. recompute h; 3. store h, dg, du (the outputs may alias the inputs)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    tl.store(H_OUT + offs, (silu * u).to(H_OUT.dtype.element_ty), mask=mask)
    tl.store(DG + offs, (dh * u * s * (1.0 + g * (1.0 - s))).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dh * silu).to(DU.dtype.element_ty), mask=mask)


def swiglu_forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``silu(g) * u`` for contiguous tensors of one shape."""
    h = torch.empty_like(g)
    n = g.numel()
    kernel_for(_swiglu_forward_kernel, g.device)[(triton.cdiv(n, BLOCK),)](g, u, h, n, BLOCK=BLOCK)
    return h


def swiglu_backward(
    dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor, in_place: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(h, dg, du)``. With ``in_place`` they are written over ``dh``, ``g`` and ``u``."""
    dh = dh.contiguous()
    if in_place:
        h_out, dg, du = dh, g, u
    else:
        h_out, dg, du = torch.empty_like(g), torch.empty_like(g), torch.empty_like(u)
    n = g.numel()
    kernel_for(_swiglu_backward_kernel, g.device)[(triton.cdiv(n, BLOCK),)](
        dh, g, u, h_out, dg, du, n, BLOCK=BLOCK
    )
    return h_out, dg, du


def swiglu_reference(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Pure PyTorch, as transformers' LlamaMLP: ``act_fn(gate) * up`` with SiLU."""
    return F.silu(g) * u


class SwiGLUFunction(torch.autograd.Function):
    """Saves ``g`` and ``u`` only; ``h`` is recomputed in backward."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        g, u = g.contiguous(), u.contiguous()
        ctx.save_for_backward(g, u)
        return swiglu_forward(g, u)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        g, u = ctx.saved_tensors
        _, dg, du = swiglu_backward(dh, g, u)
        return dg, du


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``silu(g) * u``: the Triton kernel on CUDA, the reference elsewhere."""
    if on_gpu(g, u):
        return SwiGLUFunction.apply(g, u)
    return swiglu_reference(g, u)
