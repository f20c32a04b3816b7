"""Attention kernels for training on rows of varying length.

On Hopper GPUs PyTorch's scaled-dot-product attention prefers cuDNN's kernel, and cuDNN builds an execution
plan for every new shape: about 0.2 s of host time per new length, forward and backward each (bench/NOTES.md,
"The tutorial's own run"). A loop of fixed shapes builds its plans once; the tutorial's rows give almost
every micro-batch a new length, and plan building was more than half of each step while the GPU sat idle.
Flash and memory-efficient attention need no plan, so training runs with cuDNN's attention left out.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["VARYING_LENGTH_BACKENDS", "varying_length_attention"]

# Every backend but cuDNN's, in PyTorch's own order of preference.
VARYING_LENGTH_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def varying_length_attention() -> AbstractContextManager:
    """A context in which attention picks kernels that need no per-shape plan (see the module docstring)."""
    return sdpa_kernel(VARYING_LENGTH_BACKENDS)
