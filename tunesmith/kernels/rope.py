"""Rotary position embedding applied to Q and K in place, one token per Triton program.

For each head vector split into halves ``(x1, x2)`` and the position's ``(cos, sin)`` (transformers
builds both as ``cat(freqs, freqs)``, so each half sees the same angle):
``out1 = x1 cos - x2 sin``, ``out2 = x2 cos + x1 sin``  (Su et al. 2021, https://arxiv.org/abs/2104.09864).
The rotation is orthogonal, so the backward pass is the same kernel with ``sin`` negated and nothing
but ``cos``/``sin`` (shared by every layer) is saved.
"""

import torch

from tunesmith.kernels._triton import kernel_for, next_power_of_2, on_gpu, tl, triton

__all__ = ["rope_forward", "rope_backward", "rope_reference", "RoPEFunction", "apply_rope"]


@triton.jit
def _rotate_heads(X, row, n_heads, d, dmask, cos, sin, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate in place all ``n_heads`` head vectors of token ``row`` in ``X`` (B*T, n_heads, 2*HALF)."""
    h = tl.arange(0, BLOCK_H)
    for start in range(0, n_heads, BLOCK_H):
        heads = start + h
        m = (heads < n_heads)[:, None] & dmask[None, :]
        base = X + row * n_heads * 2 * HALF + heads[:, None] * 2 * HALF + d[None, :]
        x1 = tl.load(base, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(base + HALF, mask=m, other=0.0).to(tl.float32)
        tl.store(base, (x1 * cos - x2 * sin).to(X.dtype.element_ty), mask=m)
        tl.store(base + HALF, (x2 * cos + x1 * sin).to(X.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(
    Q, K, COS, SIN, q_heads, k_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    BACKWARD: tl.constexpr,
):  # fmt: skip
    """Token ``row``: 1. load its cos/sin halves; 2. rotate every Q head, then every K head, in place."""
    row = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    cos = tl.load(COS + row * 2 * HALF + d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + row * 2 * HALF + d, mask=dmask, other=0.0).to(tl.float32)
    if BACKWARD:
        sin = -sin
    _rotate_heads(Q, row, q_heads, d, dmask, cos, sin, HALF, BLOCK_H)
    _rotate_heads(K, row, k_heads, d, dmask, cos, sin, HALF, BLOCK_H)


def _launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> None:
    """q (B, T, Hq, D) and k (B, T, Hk, D), both contiguous, rotated in place; cos/sin (B|1, T, D)."""
    b, t, hq, d = q.shape
    cos = cos.expand(b, t, d).reshape(b * t, d).contiguous()
    sin = sin.expand(b, t, d).reshape(b * t, d).contiguous()
    block_h = min(next_power_of_2(max(hq, k.shape[2])), 8)
    kernel_for(_rope_kernel, q.device)[(b * t,)](
        q, k, cos, sin, hq, k.shape[2], HALF=d // 2, BLOCK_H=block_h, BLOCK_D=next_power_of_2(d // 2),
        BACKWARD=backward, num_warps=4,
    )  # fmt: skip


def rope_forward(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate contiguous ``q`` (B, T, Hq, D) and ``k`` (B, T, Hk, D) in place by the angles in cos/sin."""
    _launch(q, k, cos, sin, backward=False)


def rope_backward(dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotate the gradients back (the transpose of the rotation), in place."""
    _launch(dq, dk, cos, sin, backward=True)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure PyTorch: transformers' ``apply_rotary_pos_emb`` but on the (B, T, H, D) layout; not in place."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class RoPEFunction(torch.autograd.Function):
    """Rotates Q and K in place. ``q``/``k`` are (B, T, H*D) or (B, T, H, D) intermediates nobody else
    reads, and not views (autograd forbids a multi-output Function from modifying views in place)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int):
        b, t = q.shape[:2]
        rope_forward(q.view(b, t, -1, head_dim), k.view(b, t, -1, head_dim), cos, sin)
        ctx.mark_dirty(q, k)
        ctx.save_for_backward(cos, sin)
        ctx.head_dim = head_dim
        return q, k

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor):
        cos, sin = ctx.saved_tensors
        b, t = dq.shape[:2]
        # The kernel rotates in place: work on our own contiguous copies (one copy each, not two).
        dq = dq.clone(memory_format=torch.contiguous_format)
        dk = dk.clone(memory_format=torch.contiguous_format)
        rope_backward(dq.view(b, t, -1, ctx.head_dim), dk.view(b, t, -1, ctx.head_dim), cos, sin)
        return dq, dk, None, None, None


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding on (B, T, H*D) or (B, T, H, D) projections; returns (B, T, H, D) views.

    The in-place kernel on CUDA, the reference elsewhere.
    """
    b, t = q.shape[:2]
    if on_gpu(q, k) and q.is_contiguous() and k.is_contiguous() and q._base is None and k._base is None:
        q, k = RoPEFunction.apply(q, k, cos, sin, head_dim)
        return q.view(b, t, -1, head_dim), k.view(b, t, -1, head_dim)
    return rope_reference(q.view(b, t, -1, head_dim), k.view(b, t, -1, head_dim), cos, sin)
