"""GeGLU, the gated activation of Gemma's MLPs: ``h = gelu_tanh(g) * u``, elementwise.

``gelu_tanh(g) = 0.5 g (1 + t)`` with ``t = tanh(c (g + 0.044715 g^3))``, ``c = sqrt(2 / pi)`` (transformers'
``gelu_pytorch_tanh``). Backward: ``dg = dh * u * (0.5 (1 + t) + 0.5 g (1 - t^2) c (1 + 3 * 0.044715 g^2))``,
``du = dh * gelu_tanh(g)``. As the SwiGLU kernels (``swiglu.py``), the backward also returns ``h``
(recomputed) for the LoRA gradient of ``down_proj``, and with ``in_place`` writes ``h, dg, du`` over
``dh, g, u``. tanh is written through the sigmoid (``tanh(z) = 2 sigmoid(2z) - 1``), which every Triton
backend has. Source: Shazeer 2020, https://arxiv.org/abs/2002.05202; Hendrycks & Gimpel 2016,
https://arxiv.org/abs/1606.08415.
"""

import math

import torch
import torch.nn.functional as F

from tunesmith.kernels._triton import kernel_for, on_gpu, tl, triton

__all__ = ["geglu_forward", "geglu_backward", "geglu_reference", "GeGLUFunction", "geglu"]

BLOCK = 1024  # elements per program, as swiglu.py
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


@triton.jit
def _tanh(z):
    return 2.0 * tl.sigmoid(2.0 * z) - 1.0


@triton.jit
def _geglu_forward_kernel(G, U, H, n, C: tl.constexpr, CUBIC: tl.constexpr, BLOCK: tl.constexpr):
    """h = gelu_tanh(g) * u in float32, rounded once."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(C * (g + CUBIC * g * g * g))
    tl.store(H + offs, (0.5 * g * (1.0 + t) * u).to(H.dtype.element_ty), mask=mask)


@triton.jit
def _geglu_backward_kernel(
    DH, G, U, H_OUT, DG, DU, n, C: tl.constexpr, CUBIC: tl.constexpr, BLOCK: tl.constexpr
):
    """1. load dh, g, u; 2. recompute gelu_tanh(g) and its derivative; 3. store h, dg, du (may alias)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dh = tl.load(DH + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    t = _tanh(C * (g + CUBIC * g * g * g))
    gelu = 0.5 * g * (1.0 + t)
    slope = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * C * (1.0 + 3.0 * CUBIC * g * g)
    tl.store(H_OUT + offs, (gelu * u).to(H_OUT.dtype.element_ty), mask=mask)
    tl.store(DG + offs, (dh * u * slope).to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dh * gelu).to(DU.dtype.element_ty), mask=mask)


def geglu_forward(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(g) * u`` for contiguous tensors of one shape."""
    h = torch.empty_like(g)
    n = g.numel()
    kernel_for(_geglu_forward_kernel, g.device)[(triton.cdiv(n, BLOCK),)](
        g, u, h, n, C=_SQRT_2_OVER_PI, CUBIC=_CUBIC, BLOCK=BLOCK
    )
    return h


def geglu_backward(
    dh: torch.Tensor, g: torch.Tensor, u: torch.Tensor, in_place: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(h, dg, du)``. With ``in_place`` they are written over ``dh``, ``g`` and ``u``."""
    dh = dh.contiguous()
    if in_place:
        h_out, dg, du = dh, g, u
    else:
        h_out, dg, du = torch.empty_like(g), torch.empty_like(g), torch.empty_like(u)
    n = g.numel()
    kernel_for(_geglu_backward_kernel, g.device)[(triton.cdiv(n, BLOCK),)](
        dh, g, u, h_out, dg, du, n, C=_SQRT_2_OVER_PI, CUBIC=_CUBIC, BLOCK=BLOCK
    )
    return h_out, dg, du


def geglu_reference(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Pure PyTorch, as transformers' Gemma MLP: ``gelu(gate, approximate="tanh") * up``."""
    return F.gelu(g, approximate="tanh") * u


class GeGLUFunction(torch.autograd.Function):
    """Saves ``g`` and ``u`` only; ``h`` is recomputed in backward."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        g, u = g.contiguous(), u.contiguous()
        ctx.save_for_backward(g, u)
        return geglu_forward(g, u)

    @staticmethod
    def backward(ctx, dh: torch.Tensor):
        g, u = ctx.saved_tensors
        _, dg, du = geglu_backward(dh, g, u)
        return dg, du


def geglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(g) * u``: the Triton kernel on CUDA, the reference elsewhere."""
    if on_gpu(g, u):
        return GeGLUFunction.apply(g, u)
    return geglu_reference(g, u)
