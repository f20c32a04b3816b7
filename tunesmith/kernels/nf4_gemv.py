"""``x @ W.T`` for a few rows of ``x`` (a decode step) against an NF4 weight, reading its packed bytes once.

Generating one token reads every weight once, so a 4-bit model's step is as fast as those bytes stream.
bitsandbytes' own kernel for one row reaches under 1 TB/s on an H200 and needs a separate pass to decode the
double-quantized scales; this one decodes nibbles and scales in registers and multiplies on tensor
cores.
Storage as in ``nf4.py``: element ``j`` of the row-major weight is nibble ``j`` (high nibble first), its
scale is that of block ``j // blocksize``; rows must hold whole blocks (every model's widths do). Each program owns ``BLOCK_N`` output features and walks ``K``:
the bytes of a chunk give the even columns (high nibbles) and the odd ones (low nibbles), each multiplied
with the matching columns of ``x``. Weights are rounded to the compute dtype before the product, as
bitsandbytes' dequantize-then-matmul does; products accumulate in float32.
"""

import math

import torch

from tunesmith.kernels._triton import kernel_for, on_gpu, tl, triton
from tunesmith.kernels.nf4 import _offset_on, nf4_dequantize_reference

__all__ = ["nf4_gemv_forward", "nf4_gemv_reference", "nf4_gemv", "MAX_ROWS"]

MAX_ROWS = 16  # rows of x one launch takes (the tensor-core tile's height); more rows go through dequantize
BLOCK_K = 256  # weight columns per step of the walk: 128 bytes of each row


@triton.jit
def _nf4_gemv_kernel(
    X, PACKED, ABSMAX, CODE2, ABSMAX2, OFFSET, CODE, OUT, M, N, K, stride_xm, stride_om,
    BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """1. a chunk's bytes -> even/odd nibbles -> table values; its blocks' scales (two-level when NESTED),
    loaded once per block and spread over the block's bytes; rounded to x's dtype; 2. one row of x: a
    row-wise sum; several: acc += x_even @ w_even.T + x_odd @ w_odd.T; 3. store in OUT's dtype."""
    features = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    feature_ok = features < N
    pair = tl.arange(0, BLOCK_K // 2)
    blocks_per_chunk: tl.constexpr = BLOCK_K // BLOCKSIZE
    chunk_block = tl.arange(0, blocks_per_chunk)
    blocks_per_row = K // BLOCKSIZE
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    else:
        rows = tl.arange(0, BLOCK_M)
        row_ok = rows < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        col = k0 + 2 * pair  # the even column of each byte
        col_ok = col < K
        w_ok = feature_ok[:, None] & col_ok[None, :]
        byte = tl.load(PACKED + features[:, None] * (K // 2) + (col[None, :] // 2), mask=w_ok, other=0)
        byte = byte.to(tl.int32)
        block = features[:, None] * blocks_per_row + (k0 // BLOCKSIZE + chunk_block)[None, :]
        block_ok = feature_ok[:, None] & ((k0 + chunk_block * BLOCKSIZE) < K)[None, :]
        if NESTED:
            qscale = tl.load(ABSMAX + block, mask=block_ok, other=0).to(tl.int32)
            scale = tl.load(CODE2 + qscale) * tl.load(ABSMAX2 + block // BLOCKSIZE2, mask=block_ok, other=0.0)
            scale = scale + tl.load(OFFSET)
        else:
            scale = tl.load(ABSMAX + block, mask=block_ok, other=0.0)
        spread = tl.broadcast_to(scale[:, :, None], (BLOCK_N, blocks_per_chunk, BLOCKSIZE // 2))
        scale = tl.reshape(spread, (BLOCK_N, BLOCK_K // 2))
        # Rounded to x's dtype, then widened: a bf16/fp16 value is exact in TF32, so the tensor-core
        # product is exact; float32 inputs take the IEEE path instead.
        w_even = (tl.load(CODE + (byte >> 4)) * scale).to(X.dtype.element_ty).to(tl.float32)
        w_odd = (tl.load(CODE + (byte & 0xF)) * scale).to(X.dtype.element_ty).to(tl.float32)
        if BLOCK_M == 1:
            x_even = tl.load(X + col, mask=col_ok, other=0.0).to(tl.float32)
            x_odd = tl.load(X + col + 1, mask=col_ok, other=0.0).to(tl.float32)
            acc += tl.sum(w_even * x_even[None, :] + w_odd * x_odd[None, :], axis=1)
        else:
            x_ok = row_ok[:, None] & col_ok[None, :]
            x_at = X + rows[:, None] * stride_xm + col[None, :]
            x_even = tl.load(x_at, mask=x_ok, other=0.0).to(tl.float32)
            x_odd = tl.load(x_at + 1, mask=x_ok, other=0.0).to(tl.float32)
            if IEEE:
                acc += tl.dot(x_even, tl.trans(w_even), input_precision="ieee")
                acc += tl.dot(x_odd, tl.trans(w_odd), input_precision="ieee")
            else:
                acc += tl.dot(x_even, tl.trans(w_even), input_precision="tf32")
                acc += tl.dot(x_odd, tl.trans(w_odd), input_precision="tf32")
    if BLOCK_M == 1:
        tl.store(OUT + features, acc.to(OUT.dtype.element_ty), mask=feature_ok)
    else:
        out_at = OUT + rows[:, None] * stride_om + features[None, :]
        tl.store(out_at, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & feature_ok[None, :])


def _block_n(n: int) -> int:
    """Output features per program: enough programs to fill the card's 100+ multiprocessors twice."""
    return 32 if n >= 8192 else 16


def nf4_gemv_forward(
    x: torch.Tensor, packed: torch.Tensor, quant_state, block_n: int | None = None, num_warps: int = 4
) -> torch.Tensor:
    """Launch the kernel: ``x`` (..., K) with at most ``MAX_ROWS`` rows, the packed weight and its
    ``QuantState`` (``shape`` (N, K)); returns (..., N) in ``x``'s dtype. ``block_n`` and ``num_warps``
    override the launch shape (the benchmark sweeps them)."""
    n, k = quant_state.shape
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m > MAX_ROWS or k % quant_state.blocksize or BLOCK_K % quant_state.blocksize:
        raise ValueError(f"nf4_gemv takes at most {MAX_ROWS} rows and rows of whole blocks, got {x.shape}")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    nested = bool(quant_state.nested)
    if nested:
        state2 = quant_state.state2
        code2, absmax2, blocksize2 = state2.code, state2.absmax, state2.blocksize
        offset = _offset_on(quant_state, packed.device)
    else:
        code2 = absmax2 = offset = quant_state.absmax
        blocksize2 = 1
    block_n = block_n or _block_n(n)
    kernel_for(_nf4_gemv_kernel, x.device)[(triton.cdiv(n, block_n),)](
        x2, packed.view(torch.uint8), quant_state.absmax, code2, absmax2, offset, quant_state.code, out,
        m, n, k, x2.stride(0), out.stride(0), BLOCKSIZE=quant_state.blocksize, BLOCKSIZE2=blocksize2,
        NESTED=nested, IEEE=x.dtype == torch.float32, BLOCK_M=1 if m == 1 else MAX_ROWS, BLOCK_N=block_n,
        BLOCK_K=BLOCK_K,
        num_warps=num_warps,
    )  # fmt: skip
    return out.view(*x.shape[:-1], n)


def nf4_gemv_reference(x: torch.Tensor, packed: torch.Tensor, quant_state) -> torch.Tensor:
    """Pure PyTorch: dequantize (bit-exact with bitsandbytes), then the matmul in float32, rounded once."""
    weight = nf4_dequantize_reference(packed, quant_state).to(x.dtype)
    return (x.float() @ weight.float().T).to(x.dtype)


def nf4_gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` for a ``Params4bit`` NF4 weight: the kernel on CUDA, the reference elsewhere."""
    state = weight.quant_state
    aligned = state.shape[1] % state.blocksize == 0 and BLOCK_K % state.blocksize == 0  # rows = whole blocks
    small = math.prod(state.shape) < 2**31  # int32 offsets
    if on_gpu(x, weight) and aligned and small and math.prod(x.shape[:-1]) <= MAX_ROWS:
        return nf4_gemv_forward(x, weight.data, weight.quant_state)
    return nf4_gemv_reference(x, weight.data, weight.quant_state)
