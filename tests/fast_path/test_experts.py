"""The grouped product under the fast path's experts forward: PyTorch's grouped kernel gives, values and
gradients, what one product per expert gives, empty experts included."""

from __future__ import annotations

import pytest
import torch
from _models import rel_err

from tunesmith.fast_path import experts
from tunesmith.fast_path.experts import grouped_linear, grouped_linear_reference


@pytest.mark.skipif(experts._GROUPED_MM is None, reason="this PyTorch has no grouped_mm")
def test_the_grouped_kernel_gives_one_product_per_expert_with_empty_experts(monkeypatch):
    monkeypatch.setattr(experts, "_grouped_mm_takes", lambda x, weight: True)  # the kernel, also on CPU
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(11, 32, generator=generator, requires_grad=True)
    weight = torch.randn(4, 32, 24, generator=generator).transpose(-2, -1).contiguous().transpose(-2, -1)
    weight.requires_grad_()
    offsets = torch.tensor([3, 3, 9, 11], dtype=torch.int32)  # expert 1 got no token
    upstream = torch.randn(11, 24, generator=generator)

    results = []
    for product in (grouped_linear, grouped_linear_reference):
        out = product(x, weight, offsets)
        x_grad, weight_grad = torch.autograd.grad(out, (x, weight), upstream)
        results.append((out, x_grad, weight_grad))
    (out, x_grad, weight_grad), (want, want_x, want_weight) = results
    assert rel_err(out, want) < 1e-6 and rel_err(x_grad, want_x) < 1e-6
    assert rel_err(weight_grad, want_weight) < 1e-6 and weight_grad[1].abs().max() == 0
    assert torch.equal(want[3:9], x[3:9] @ weight[2])


def test_on_the_cpu_the_reference_runs():
    x, weight = torch.randn(5, 8), torch.randn(2, 8, 4)
    assert not experts._grouped_mm_takes(x, weight)
    out = grouped_linear(x, weight, torch.tensor([2, 5], dtype=torch.int32))
    assert torch.allclose(out, torch.cat([x[:2] @ weight[0], x[2:] @ weight[1]]))


@pytest.mark.gpu
def test_on_a_gpu_the_grouped_kernel_takes_the_experts_and_matches_the_reference():
    """bf16 on CUDA: the tensors the experts forward passes (gathered rows, a column-major factor, a row-major
    stack) go through PyTorch's grouped kernel, with values and gradients as one product per expert gives."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16, generator=generator, requires_grad=True)
    stack = torch.randn(8, 512, 256, device="cuda", dtype=torch.bfloat16, generator=generator)
    factor = experts._column_major(torch.randn(8, 256, 16, device="cuda", dtype=torch.bfloat16))
    offsets = torch.tensor([40, 40, 100, 180, 181, 250, 290, 300], device="cuda", dtype=torch.int32)
    for weight in (stack.transpose(-2, -1), factor):
        assert experts._grouped_mm_takes(x, weight)
        out = grouped_linear(x, weight, offsets)
        want = grouped_linear_reference(x, weight, offsets)
        upstream = torch.randn_like(out)
        (got_grad,) = torch.autograd.grad(out, x, upstream)
        (want_grad,) = torch.autograd.grad(want, x, upstream)
        assert rel_err(out, want) < 1e-2 and rel_err(got_grad, want_grad) < 1e-2
