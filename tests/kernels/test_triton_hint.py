"""Without Triton the kernels say how to install it; off CUDA they refuse to launch without the interpreter."""

from __future__ import annotations

import os

import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.kernels import _triton


def test_missing_triton_stand_in_raises_the_install_hint():
    kernel = _triton._MissingTriton.jit(lambda x: x)
    with pytest.raises(TunesmithError, match="pip install"):
        kernel[(1,)]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs kernels on CPU")
def test_cpu_launch_without_the_interpreter_points_to_the_reference():
    import triton  # noqa: F401  (part of the test install; the CPU refusal is only reachable with it)

    from tunesmith.kernels.swiglu import swiglu, swiglu_forward

    g = torch.randn(4, 8)
    with pytest.raises(TunesmithError, match="reference"):
        swiglu_forward(g, g)
    assert torch.allclose(swiglu(g, g), torch.nn.functional.silu(g) * g)  # the module-level helper falls back
