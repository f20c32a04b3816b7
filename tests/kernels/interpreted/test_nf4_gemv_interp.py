"""The NF4 matrix-vector kernel vs its reference (bitsandbytes' dequantization, then a float32 matmul)."""

from __future__ import annotations

import bitsandbytes.functional as bnb_f
import pytest
import torch

from tunesmith.kernels.nf4_gemv import nf4_gemv_forward, nf4_gemv_reference


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "plain"])
@pytest.mark.parametrize("rows", [1, 5, 16])  # one row: the row-wise sum; more: tensor cores
@pytest.mark.parametrize(("n", "k"), [(48, 320), (37, 192)])  # a chunk past the row end, odd features
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_matches_reference(n, k, rows, nested, dtype):
    w = torch.randn(n, k, dtype=dtype)
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
    x = torch.randn(rows, k, dtype=dtype)
    got, want = nf4_gemv_forward(x, packed, state), nf4_gemv_reference(x, packed, state)
    assert got.shape == want.shape == (rows, n)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the output's own rounding, summed in another order
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() < tol
