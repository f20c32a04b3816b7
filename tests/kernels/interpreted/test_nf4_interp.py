"""NF4 dequantization kernel vs the reference (itself bit-exact with bitsandbytes, see test_nf4_reference.py)."""

from __future__ import annotations

import bitsandbytes.functional as bnb_f
import pytest
import torch

from tunesmith.kernels.nf4 import nf4_dequantize_forward, nf4_dequantize_reference


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "plain"])
@pytest.mark.parametrize("shape", [(96, 130), (33, 77), (5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_kernel_matches_reference(shape, dtype, nested):
    w = torch.randn(shape, dtype=dtype)
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, compress_statistics=nested, quant_type="nf4")
    got, want = nf4_dequantize_forward(packed, state), nf4_dequantize_reference(packed, state)
    if dtype == torch.bfloat16:
        # the interpreter truncates float32 -> bf16 (the GPU rounds to nearest: bit-exact in test_kernels_gpu.py)
        ulp = want.float().abs() * 2.0**-7
        assert ((got.float() - want.float()).abs() <= ulp).all()
    else:
        assert torch.equal(got, want)
