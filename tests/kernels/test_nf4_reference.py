"""The NF4 reference reads bitsandbytes' storage bit-exactly (CPU dequantization as the oracle)."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from tunesmith.kernels.nf4 import is_nf4_weight, nf4_dequantize, nf4_dequantize_reference


@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "plain"])
@pytest.mark.parametrize("shape", [(96, 130), (33, 77), (5, 3), (256, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_reference_is_bit_exact_with_bitsandbytes(shape, dtype, nested):
    w = torch.randn(shape, dtype=dtype)
    packed, state = bnb.functional.quantize_4bit(
        w, blocksize=64, compress_statistics=nested, quant_type="nf4"
    )
    assert torch.equal(nf4_dequantize_reference(packed, state), bnb.functional.dequantize_4bit(packed, state))


def test_linear4bit_weight_dequantizes_through_the_public_helper(monkeypatch):
    # Under TRITON_INTERPRET=1 the helper takes the interpreted kernel, whose float32 -> bf16 cast truncates
    # (test_nf4_interp.py bounds that); this checks the path CPU users get: the reference, bit-exact.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = bnb.nn.Linear4bit(40, 24, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(
        torch.randn(24, 40, dtype=torch.bfloat16), requires_grad=False, quant_type="nf4"
    )
    layer = layer.to("cpu")  # quantizes
    assert is_nf4_weight(layer.weight)
    dense = nf4_dequantize(layer.weight)
    assert dense.shape == (24, 40) and torch.equal(
        dense, bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    )
