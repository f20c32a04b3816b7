"""LoRA fused into projections that share one input: Q/K/V (three outputs) or O (one).

Each projection ``i`` is ``y_i = x W_i^T + b_i + s_i (x A_i^T) B_i^T`` with a frozen base weight ``W_i``
(bf16, or NF4 dequantized on the fly and dropped right after use, in forward and again in backward),
LoRA factors ``A_i`` (r x in), ``B_i`` (out x r) and scale ``s_i``. Backward, with ``z_i = s_i dY_i B_i``:
``dx = sum_i dY_i W_i + z_i A_i``,  ``dA_i = z_i^T x``,  ``dB_i = s_i dY_i^T (x A_i^T)``.
All ``A_i`` are stacked so ``x A^T`` and ``z A`` are one skinny matmul each instead of three.
Saved for backward: ``x`` and the small ``x A^T`` (N x sum r); never a dequantized weight.
Hu et al. 2021, https://arxiv.org/abs/2106.09685.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunesmith.kernels.nf4 import is_nf4_weight, nf4_dequantize

__all__ = [
    "Projection",
    "dense_weight",
    "lora_projections_reference",
    "LoRAProjectionsFunction",
    "lora_projections",
]


@dataclass
class Projection:
    """One frozen linear layer plus its optional LoRA adapter (``lora_a``/``lora_b`` None: no adapter)."""

    weight: torch.Tensor  # (out, in) dense, or a bitsandbytes NF4 Params4bit
    bias: torch.Tensor | None = None
    lora_a: torch.Tensor | None = None  # (r, in)
    lora_b: torch.Tensor | None = None  # (out, r)
    scaling: float = 1.0


def dense_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The base weight as a dense (out, in) tensor in ``dtype``; NF4 is dequantized (a temporary)."""
    if is_nf4_weight(weight):
        return nf4_dequantize(weight).to(dtype)
    return weight if weight.dtype == dtype else weight.to(dtype)


def _base_matmul(x: torch.Tensor, p: Projection) -> torch.Tensor:
    return F.linear(x, dense_weight(p.weight, x.dtype), None if p.bias is None else p.bias.to(x.dtype))


def lora_projections_reference(x: torch.Tensor, projections: list[Projection]) -> list[torch.Tensor]:
    """Pure PyTorch through autograd, as PEFT computes a ``lora.Linear`` with dropout 0."""
    outs = []
    for p in projections:
        y = _base_matmul(x, p)
        if p.lora_a is not None:
            y = y + (x @ p.lora_a.to(x.dtype).t() @ p.lora_b.to(x.dtype).t()) * p.scaling
        outs.append(y)
    return outs


def _stacked_a(projections: list[Projection], dtype) -> tuple[torch.Tensor | None, list[int]]:
    ranks = [0 if p.lora_a is None else p.lora_a.shape[0] for p in projections]
    if not any(ranks):
        return None, ranks
    factors = [p.lora_a.to(dtype) for p in projections if p.lora_a is not None]
    return (torch.cat(factors) if len(factors) > 1 else factors[0]), ranks


class LoRAProjectionsFunction(torch.autograd.Function):
    """``apply(x, n, *flat)`` with ``flat`` = (weight, bias, A, B) per projection; scales via ``ctx``."""

    @staticmethod
    def forward(ctx, x, scalings, *flat):
        projections = [
            Projection(*flat[i : i + 4], scaling=s)
            for i, s in zip(range(0, len(flat), 4), scalings, strict=True)
        ]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        a_all, ranks = _stacked_a(projections, x.dtype)
        xa = x2 @ a_all.t() if a_all is not None else None  # (N, sum r)
        outs, offset = [], 0
        for p, r in zip(projections, ranks, strict=True):
            y = _base_matmul(x, p)  # a fresh tensor in x's shape, not a view: callers may rotate it in place
            if r:
                y.view(-1, y.shape[-1]).addmm_(
                    xa[:, offset : offset + r], p.lora_b.to(x.dtype).t(), alpha=p.scaling
                )
                offset += r
            outs.append(y)
        ctx.projections, ctx.ranks = projections, ranks
        ctx.save_for_backward(x2, xa)
        ctx.x_shape = shape
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x2, xa = ctx.saved_tensors
        projections, ranks = ctx.projections, ctx.ranks
        need_dx = ctx.needs_input_grad[0]
        dx = None
        z_parts, flat_grads, offset = [], [], 0
        for p, r, g in zip(projections, ranks, grads, strict=True):
            g = g.reshape(-1, g.shape[-1]).to(x2.dtype)
            if need_dx:
                w = dense_weight(p.weight, x2.dtype)
                dx = g @ w if dx is None else dx.addmm_(g, w)
            da = db = None
            if r:
                z = (g @ p.lora_b.to(x2.dtype)) * p.scaling  # (N, r)
                z_parts.append(z)
                da = (z.t() @ x2).to(p.lora_a.dtype)
                db = ((g.t() @ xa[:, offset : offset + r]) * p.scaling).to(p.lora_b.dtype)
                offset += r
            dbias = g.sum(0).to(p.bias.dtype) if p.bias is not None and p.bias.requires_grad else None
            flat_grads += [None, dbias, da, db]
        if dx is not None and z_parts:
            a_all, _ = _stacked_a(projections, x2.dtype)
            dx.addmm_(torch.cat(z_parts, dim=1), a_all)
        dx = dx.view(ctx.x_shape) if dx is not None else None
        return (dx, None, *flat_grads)


def lora_projections(x: torch.Tensor, projections: list[Projection]) -> list[torch.Tensor]:
    """All projections of ``x``: the fused function on CUDA, the autograd reference elsewhere."""
    from tunesmith.kernels._triton import on_gpu

    if on_gpu(x):
        flat = [t for p in projections for t in (p.weight, p.bias, p.lora_a, p.lora_b)]
        return list(LoRAProjectionsFunction.apply(x, [p.scaling for p in projections], *flat))
    return lora_projections_reference(x, projections)
