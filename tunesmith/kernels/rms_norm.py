"""RMSNorm: ``y = (w + offset) * (x / sqrt(mean(x^2) + eps))``, one row per Triton program.

Forward keeps only ``x`` (the caller's tensor, saved anyway by the residual stream) and one float32
``rstd`` per row; backward recomputes the normalised row. Two conventions, as transformers has them:
- Llama, Qwen (``weight_offset=0``): the normalised row is computed in float32, cast to the input dtype,
  then multiplied by the weight;
- Gemma (``weight_offset=1``, its weights start at 0): the row is multiplied by ``1 + w`` in float32 and
  rounded once (Gemma2RMSNorm / Gemma3RMSNorm).

Backward, with ``n = x * rstd`` and ``g = dy * (w + offset)``:  ``dx = rstd * (g - n * mean(g * n))``,
``dw = sum_rows(dy * n)``.  Source: Zhang & Sennrich 2019, https://arxiv.org/abs/1910.07467.
"""

import torch

from tunesmith.kernels._triton import kernel_for, next_power_of_2, num_warps_for, on_gpu, tl, triton

__all__ = [
    "rms_norm_forward",
    "rms_norm_backward",
    "rms_norm_reference",
    "RMSNormFunction",
    "rms_norm",
]

# Rows per program in the weight-gradient pass: each program sums its rows' dw into one float32
# partial row, so the final reduction reads (rows / ROWS_PER_PROGRAM) x H instead of rows x H.
ROWS_PER_PROGRAM = 16


@triton.jit
def _rms_norm_forward_kernel(
    X, W, Y, RSTD, stride, n_cols, eps, offset, BLOCK: tl.constexpr, CAST_FIRST: tl.constexpr
):
    """One row: 1. load x in float32; 2. rstd = 1/sqrt(mean(x^2)+eps); 3. y = w * cast(x*rstd), or
    cast((w + offset) * x * rstd) without CAST_FIRST (Gemma)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    normed = x * rstd
    if CAST_FIRST:
        normed = normed.to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride + cols, (normed * w).to(Y.dtype.element_ty), mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_backward_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    stride,
    n_rows,
    n_cols,
    offset,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_DW: tl.constexpr,
    CAST_FIRST: tl.constexpr,
):
    """ROWS rows per program: dx per row; the float32 dw partial sum of those rows when HAS_DW."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = (pid * ROWS + i).to(tl.int64)
        if row < n_rows:
            x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            n = x * rstd
            g = dy * w
            dx = rstd * (g - n * (tl.sum(g * n, axis=0) / n_cols))
            tl.store(DX + row * stride + cols, dx.to(DX.dtype.element_ty), mask=mask)
            if HAS_DW:
                if CAST_FIRST:
                    n = n.to(DX.dtype.element_ty).to(tl.float32)
                dw += dy * n
    if HAS_DW:
        tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel on ``x`` (..., H). Returns ``(y, rstd)``, rstd float32 per row."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    n_rows, n_cols = x2.shape
    # y is a tensor of its own in x's shape, not a view: a kernel may then change it in place (RoPE on
    # Qwen3's normalised heads)
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block = next_power_of_2(n_cols)
    kernel_for(_rms_norm_forward_kernel, x.device)[(n_rows,)](
        x2, weight, y, rstd, x2.stride(0), n_cols, eps, float(weight_offset),
        BLOCK=block, CAST_FIRST=weight_offset == 0, num_warps=num_warps_for(block),
    )  # fmt: skip
    return y, rstd


def rms_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    need_dw: bool,
    weight_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the backward kernel. Returns ``(dx, dw)``; dw is None unless ``need_dw``."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    dy2 = dy.reshape(-1, shape[-1]).contiguous()
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2)
    rows = ROWS_PER_PROGRAM if need_dw else 1  # a frozen weight needs no partial sums: one row per program
    programs = triton.cdiv(n_rows, rows)
    partial = torch.empty((programs, n_cols) if need_dw else (1,), dtype=torch.float32, device=x.device)
    block = next_power_of_2(n_cols)
    kernel_for(_rms_norm_backward_kernel, x.device)[(programs,)](
        dy2, x2, weight, rstd, dx, partial, x2.stride(0), n_rows, n_cols, float(weight_offset),
        ROWS=rows, BLOCK=block, HAS_DW=need_dw, CAST_FIRST=weight_offset == 0, num_warps=num_warps_for(block),
    )  # fmt: skip
    dw = partial.sum(0).to(weight.dtype) if need_dw else None
    return dx.view(shape), dw


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0
) -> torch.Tensor:
    """Pure PyTorch, rounding exactly as transformers' ``LlamaRMSNorm`` (``weight_offset=0``) or
    ``Gemma3RMSNorm`` (``weight_offset=1``)."""
    xf = x.to(torch.float32)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight_offset == 0:
        return weight * normed.to(x.dtype)
    return (normed * (weight_offset + weight.float())).to(x.dtype)


class RMSNormFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``x`` and the per-row ``rstd`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0):
        y, rstd = rms_norm_forward(x, weight, eps, weight_offset)
        ctx.save_for_backward(x, weight, rstd)
        ctx.weight_offset = weight_offset
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(dy, x, weight, rstd, ctx.needs_input_grad[1], ctx.weight_offset)
        return dx, dw, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    """RMSNorm of ``x``: the Triton kernel on CUDA tensors, :func:`rms_norm_reference` elsewhere."""
    if on_gpu(x, weight):
        return RMSNormFunction.apply(x, weight, eps, weight_offset)
    return rms_norm_reference(x, weight, eps, weight_offset)
