"""A LoRA adapter added to a decode step's projection in two launches: ``y += s (x A^T) B^T``, in place.

At decode time ``x`` is a few rows (one per sequence) and the base projection ``y = x W^T`` is a
matrix-vector product already made by the layer's own kernel (cuBLAS, or bitsandbytes' 4-bit gemv). PEFT then
adds a float32 adapter in six small launches (cast ``x``, ``x A^T``, ``B``, the scale, the add, the cast
back): inside the CUDA-graph step of an 8B model that is ~1,300 launches, a third of the step. Here:
1. ``_lora_down_kernel``: each program takes a 128-column slice of the input and writes its partial
   ``x A^T`` (float32, rows x rank: 64 bytes for one row at rank 16);
2. ``_lora_up_kernel``: each program sums the partials, multiplies by its block of ``B`` and stores
   ``y + s * delta`` computed in float32, rounded once as PEFT rounds it.
Many small programs rather than a few long ones: at one row the work is a few hundred KB of adapter
weights, so the time is the latency of the loads, which only more programs in flight hide.
The partials stay in a fixed order (no atomics), so a replayed step gives the same bits every time.
Inference only: no autograd (training uses ``lora_linear``'s fused projections).
Hu et al. 2021, https://arxiv.org/abs/2106.09685.
"""

import torch

from tunesmith.kernels._triton import kernel_for, next_power_of_2, tl, triton

__all__ = ["lora_decode_forward", "lora_decode_reference"]

_ROWS = 32  # rows the kernels hold in registers; more rows take another pair of launches per 32
_SPLIT = 128  # input columns per program of the first kernel: 32 programs at 4,096, 112 at 14,336
_SPLITS_AT_ONCE = 16  # partials the second kernel sums per load
_BLOCK_OUT = 64  # output columns per program of the second kernel


@triton.jit
def _lora_down_kernel(
    X, A, P, n_rows, n_in, rank, stride_x,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Slice ``pid`` of the input: P[pid] = x[:, slice] A[:, slice]^T in float32, the real rows and ranks
    only (so the second kernel reads a few bytes per slice, not the padded block)."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_ROWS)
    r = tl.arange(0, BLOCK_R)
    cols = pid * SPLIT + tl.arange(0, SPLIT)
    col_ok = cols < n_in
    x = tl.load(
        X + rows[:, None] * stride_x + cols[None, :],
        mask=(rows < n_rows)[:, None] & col_ok[None, :],
        other=0.0,
    )
    a = tl.load(A + r[:, None] * n_in + cols[None, :], mask=(r < rank)[:, None] & col_ok[None, :], other=0.0)
    partial = tl.dot(x.to(tl.float32), tl.trans(a.to(tl.float32)), input_precision="ieee")
    real = (rows < n_rows)[:, None] & (r < rank)[None, :]
    tl.store(P + pid * n_rows * rank + rows[:, None] * rank + r[None, :], partial, mask=real)


@triton.jit
def _lora_up_kernel(
    P, B, Y, n_splits, n_rows, n_out, rank, scaling, stride_y,
    SPLITS_AT_ONCE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr,
):  # fmt: skip
    """Output block ``pid``: 1. xa = the sum of the partials; 2. delta = xa B_block^T; 3. y += s delta."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_ROWS)
    r = tl.arange(0, BLOCK_R)
    real = (rows < n_rows)[None, :, None] & (r < rank)[None, None, :]
    xa = tl.zeros((BLOCK_ROWS, BLOCK_R), dtype=tl.float32)
    for first in range(0, n_splits, SPLITS_AT_ONCE):
        s = first + tl.arange(0, SPLITS_AT_ONCE)
        at = P + s[:, None, None] * n_rows * rank + rows[None, :, None] * rank + r[None, None, :]
        xa += tl.sum(tl.load(at, mask=(s < n_splits)[:, None, None] & real, other=0.0), axis=0)
    outs = pid * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    out_ok = outs < n_out
    b = tl.load(B + outs[:, None] * rank + r[None, :], mask=out_ok[:, None] & (r < rank)[None, :], other=0.0)
    delta = tl.dot(xa, tl.trans(b.to(tl.float32)), input_precision="ieee")  # (BLOCK_ROWS, BLOCK_OUT)
    where = Y + rows[:, None] * stride_y + outs[None, :]
    both = (rows < n_rows)[:, None] & out_ok[None, :]
    y = tl.load(where, mask=both, other=0.0).to(tl.float32)
    tl.store(where, (y + scaling * delta).to(Y.dtype.element_ty), mask=both)


def lora_decode_forward(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> None:
    """Add ``scaling * (x A^T) B^T`` to ``y`` (N, out) in place; ``x`` (N, in) and ``y`` with unit last
    strides, ``a`` (r, in) and ``b`` (out, r) contiguous."""
    for start in range(0, x.shape[0], _ROWS):
        _launch(y[start : start + _ROWS], x[start : start + _ROWS], a, b, scaling)


def _launch(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
    n_rows, n_in = x.shape
    n_out, rank = b.shape
    block_rows, block_r = max(16, next_power_of_2(n_rows)), max(16, next_power_of_2(rank))
    n_splits = triton.cdiv(n_in, _SPLIT)
    partials = torch.empty((n_splits, n_rows, rank), dtype=torch.float32, device=x.device)
    kernel_for(_lora_down_kernel, x.device)[(n_splits,)](
        x, a, partials, n_rows, n_in, rank, x.stride(0),
        BLOCK_ROWS=block_rows, BLOCK_R=block_r, SPLIT=_SPLIT, num_warps=4,
    )  # fmt: skip
    kernel_for(_lora_up_kernel, y.device)[(triton.cdiv(n_out, _BLOCK_OUT),)](
        partials, b, y, n_splits, n_rows, n_out, rank, float(scaling), y.stride(0),
        SPLITS_AT_ONCE=_SPLITS_AT_ONCE, BLOCK_ROWS=block_rows, BLOCK_R=block_r, BLOCK_OUT=_BLOCK_OUT,
        num_warps=4,
    )  # fmt: skip


def lora_decode_reference(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Pure PyTorch, as PEFT adds an adapter to the base output (in the adapter's dtype): a new tensor."""
    delta = (x.to(a.dtype) @ a.t()) @ b.t()
    return (y.to(delta.dtype) + delta * scaling).to(y.dtype)
