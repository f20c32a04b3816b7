"""The decode step's LoRA kernels vs PEFT's arithmetic: every row and column updated in place, one or
several input slices, more rows than one launch holds, ranks that are not powers of two, float32 adapters
on bf16 and float32 outputs."""

from __future__ import annotations

import pytest
import torch
from _models import TOL, rel_err

from tunesmith.kernels.lora_decode import (
    lora_decode_forward,
    lora_decode_group_forward,
    lora_decode_reference,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("rows", "n_in", "n_out", "rank"), [(1, 96, 77, 4), (3, 2100, 300, 20), (40, 1030, 129, 16)]
)
def test_lora_decode_adds_the_adapter_in_place(rows, n_in, n_out, rank, dtype):
    x = torch.randn(rows, n_in).to(dtype)
    y = torch.randn(rows, n_out).to(dtype)
    a, b = torch.randn(rank, n_in) / n_in**0.5, torch.randn(n_out, rank)
    want = lora_decode_reference(y, x, a, b, 0.5)
    address = y.data_ptr()
    lora_decode_forward(y, x, a, b, 0.5)
    assert y.data_ptr() == address
    assert rel_err(y, want) < TOL[dtype]


def test_rows_of_a_strided_input_and_output_are_read_and_written_where_they_are():
    wide = torch.randn(2, 2 * 64)
    x = wide[:, :64]  # a row stride of 128
    out = torch.zeros(2, 2 * 40)
    y = out[:, :40]
    a, b = torch.randn(8, 64), torch.randn(40, 8)
    lora_decode_forward(y, x, a, b, 2.0)
    assert rel_err(y, 2.0 * (x @ a.t() @ b.t())) < 1e-5
    assert torch.count_nonzero(out[:, 40:]) == 0, "nothing written past the output's own columns"


@pytest.mark.parametrize("outs", [(200, 72, 72), (300, 300)], ids=["query-key-value", "gate-up"])
@pytest.mark.parametrize("rows", [1, 35], ids=["one row", "two row blocks"])
def test_adapters_sharing_an_input_are_each_added_to_their_own_output(outs, rows):
    x = torch.randn(rows, 520).to(torch.bfloat16)
    ys = [torch.randn(rows, n).to(torch.bfloat16) for n in outs]
    adapters = [(torch.randn(8, 520) / 520**0.5, torch.randn(n, 8), 0.5 + i) for i, n in enumerate(outs)]
    want = [lora_decode_reference(y, x, a, b, s) for y, (a, b, s) in zip(ys, adapters, strict=True)]
    lora_decode_group_forward(ys, x, adapters)
    for got, expected in zip(ys, want, strict=True):
        assert rel_err(got, expected) < TOL[torch.bfloat16]


def test_adapters_of_different_ranks_cannot_share_a_launch():
    x, ys = torch.randn(1, 64), [torch.zeros(1, 16), torch.zeros(1, 16)]
    adapters = [(torch.randn(8, 64), torch.randn(16, 8), 1.0), (torch.randn(4, 64), torch.randn(16, 4), 1.0)]
    with pytest.raises(ValueError, match="one rank"):
        lora_decode_group_forward(ys, x, adapters)
