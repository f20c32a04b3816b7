"""LoRA adapters added to a decode step's projections in two launches: ``y_i += s_i (x A_i^T) B_i^T``, in
place, for up to three adapters that read the same input (a layer's query, key and value projections, or
its gate and up projections).

At decode time ``x`` is a few rows (one per sequence) and each base projection ``y = x W^T`` is a
matrix-vector product already made by the layer's own kernel (cuBLAS, or bitsandbytes' 4-bit gemv). PEFT then
adds a float32 adapter in six small launches (cast ``x``, ``x A^T``, ``B``, the scale, the add, the cast
back): inside the CUDA-graph step of an 8B model that is ~1,300 launches, a third of the step. Here:
1. ``_lora_down_kernel``: program (slice, adapter) takes a 128-column slice of the input and writes its
   partial ``x A^T`` (float32, rows x rank: 64 bytes for one row at rank 16);
2. ``_lora_up_kernel``: each program takes one block of one adapter's output, sums that adapter's partials,
   multiplies by its block of ``B`` and stores ``y + s * delta`` computed in float32, rounded once as PEFT
   rounds it.
Many small programs rather than a few long ones: at one row the work is a few hundred KB of adapter
weights, so the time is the latency of the loads, which only more programs in flight hide; adapters that
share an input share the launches too (a layer's seven adapters take four launches, not fourteen).
The partials stay in a fixed order (no atomics), so a replayed step gives the same bits every time.
Inference only: no autograd (training uses ``lora_linear``'s fused projections).
Hu et al. 2021, https://arxiv.org/abs/2106.09685.
"""

from collections.abc import Sequence

import torch

from tunesmith.kernels._triton import kernel_for, next_power_of_2, tl, triton

__all__ = ["lora_decode_forward", "lora_decode_group_forward", "lora_decode_reference", "MAX_GROUP"]

_ROWS = 32  # rows the kernels hold in registers; more rows take another pair of launches per 32
_SPLIT = 128  # input columns per program of the first kernel: 32 programs at 4,096, 112 at 14,336
_SPLITS_AT_ONCE = 16  # partials the second kernel sums per load
_BLOCK_OUT = 64  # output columns per program of the second kernel
MAX_GROUP = 3  # adapters sharing an input that one pair of launches serves (query, key and value)


@triton.jit
def _down_slice(
    X, A, P, pid, n_rows, n_in, rank, stride_x,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Slice ``pid`` of the input: P[pid] = x[:, slice] A[:, slice]^T in float32, the real rows and ranks
    only (so the second kernel reads a few bytes per slice, not the padded block)."""
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
def _lora_down_kernel(
    X, A0, A1, A2, P, n_splits, n_rows, n_in, rank, stride_x,
    BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Program (slice, adapter): that adapter's partial for that slice, into the adapter's part of P."""
    pid, adapter = tl.program_id(0), tl.program_id(1)
    part = n_splits * n_rows * rank
    if adapter == 0:
        _down_slice(X, A0, P, pid, n_rows, n_in, rank, stride_x, BLOCK_ROWS, BLOCK_R, SPLIT)
    elif adapter == 1:
        _down_slice(X, A1, P + part, pid, n_rows, n_in, rank, stride_x, BLOCK_ROWS, BLOCK_R, SPLIT)
    else:
        _down_slice(X, A2, P + 2 * part, pid, n_rows, n_in, rank, stride_x, BLOCK_ROWS, BLOCK_R, SPLIT)


@triton.jit
def _up_block(
    P, B, Y, pid, n_splits, n_rows, n_out, rank, scaling, stride_y,
    SPLITS_AT_ONCE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr,
):  # fmt: skip
    """Output block ``pid``: 1. xa = the sum of the partials; 2. delta = xa B_block^T; 3. y += s delta."""
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


@triton.jit
def _lora_up_kernel(
    P, B0, B1, B2, Y0, Y1, Y2, n_out0, n_out1, n_out2, s0, s1, s2, stride_y0, stride_y1, stride_y2,
    n_splits, n_rows, rank,
    SPLITS_AT_ONCE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_OUT: tl.constexpr,
):  # fmt: skip
    """Program ``pid``: one output block of one adapter (the first adapter's blocks, then the second's...)."""
    pid = tl.program_id(0)
    part = n_splits * n_rows * rank
    blocks0 = tl.cdiv(n_out0, BLOCK_OUT)
    blocks1 = tl.cdiv(n_out1, BLOCK_OUT)
    if pid < blocks0:
        _up_block(P, B0, Y0, pid, n_splits, n_rows, n_out0, rank, s0, stride_y0,
                  SPLITS_AT_ONCE, BLOCK_ROWS, BLOCK_R, BLOCK_OUT)  # fmt: skip
    elif pid < blocks0 + blocks1:
        _up_block(P + part, B1, Y1, pid - blocks0, n_splits, n_rows, n_out1, rank, s1, stride_y1,
                  SPLITS_AT_ONCE, BLOCK_ROWS, BLOCK_R, BLOCK_OUT)  # fmt: skip
    else:
        block = pid - blocks0 - blocks1
        _up_block(P + 2 * part, B2, Y2, block, n_splits, n_rows, n_out2, rank, s2, stride_y2,
                  SPLITS_AT_ONCE, BLOCK_ROWS, BLOCK_R, BLOCK_OUT)  # fmt: skip


def lora_decode_forward(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> None:
    """Add ``scaling * (x A^T) B^T`` to ``y`` (N, out) in place; ``x`` (N, in) and ``y`` with unit last
    strides, ``a`` (r, in) and ``b`` (out, r) contiguous."""
    lora_decode_group_forward([y], x, [(a, b, scaling)])


def lora_decode_group_forward(
    outputs: Sequence[torch.Tensor],
    x: torch.Tensor,
    adapters: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
) -> None:
    """For each output ``y_i`` and adapter ``(A_i, B_i, s_i)``: ``y_i += s_i (x A_i^T) B_i^T`` in place, one
    pair of launches for all of them. Up to ``MAX_GROUP`` adapters of one rank, all reading ``x`` (N, in)."""
    if not 1 <= len(adapters) <= MAX_GROUP or len(outputs) != len(adapters):
        raise ValueError(
            f"1 to {MAX_GROUP} adapters with one output each, got {len(adapters)} and {len(outputs)}"
        )
    if len({a.shape for a, _, _ in adapters}) != 1:
        raise ValueError("adapters sharing a launch need A matrices of one shape (one rank, one input)")
    for start in range(0, x.shape[0], _ROWS):
        _launch([y[start : start + _ROWS] for y in outputs], x[start : start + _ROWS], adapters)


def _launch(outputs: list[torch.Tensor], x: torch.Tensor, adapters) -> None:
    n_rows, n_in = x.shape
    rank = adapters[0][0].shape[0]
    block_rows, block_r = max(16, next_power_of_2(n_rows)), max(16, next_power_of_2(rank))
    n_splits = triton.cdiv(n_in, _SPLIT)
    partials = torch.empty((len(adapters), n_splits, n_rows, rank), dtype=torch.float32, device=x.device)
    padded = list(adapters) + [adapters[0]] * (
        MAX_GROUP - len(adapters)
    )  # unused slots: no program reads them
    a, b, scaling = zip(*padded, strict=True)
    ys = list(outputs) + [outputs[0]] * (MAX_GROUP - len(outputs))
    n_out = [y.shape[1] for y in outputs] + [0] * (MAX_GROUP - len(outputs))
    kernel_for(_lora_down_kernel, x.device)[(n_splits, len(adapters))](
        x, *a, partials, n_splits, n_rows, n_in, rank, x.stride(0),
        BLOCK_ROWS=block_rows, BLOCK_R=block_r, SPLIT=_SPLIT, num_warps=4,
    )  # fmt: skip
    blocks = sum(triton.cdiv(n, _BLOCK_OUT) for n in n_out)
    kernel_for(_lora_up_kernel, x.device)[(blocks,)](
        partials, *b, *ys, *n_out, *(float(s) for s in scaling), *(y.stride(0) for y in ys),
        n_splits, n_rows, rank,
        SPLITS_AT_ONCE=_SPLITS_AT_ONCE, BLOCK_ROWS=block_rows, BLOCK_R=block_r, BLOCK_OUT=_BLOCK_OUT,
        num_warps=4,
    )  # fmt: skip


def lora_decode_reference(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Pure PyTorch, as PEFT adds an adapter to the base output (in the adapter's dtype): a new tensor."""
    delta = (x.to(a.dtype) @ a.t()) @ b.t()
    return (y.to(delta.dtype) + delta * scaling).to(y.dtype)
