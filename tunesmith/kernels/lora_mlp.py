"""LoRA fused into the whole gated MLP: ``down(act(gate(x)) * up(x))``, SwiGLU (Llama, Qwen: ``act`` =
SiLU) or GeGLU (Gemma: tanh-approximated GELU).

Each of gate/up/down is a frozen base weight (bf16, or NF4 dequantized on the fly) plus a LoRA adapter
(see ``lora_linear``). Forward saves ``x``, ``g = gate(x)``, ``u = up(x)`` and the small ``x A^T`` /
``h A_down^T``; it never saves ``h = silu(g) * u`` (as large as g). Backward:
1. ``dh = dY W_d + s_d (dY B_d) A_d``;
2. one gated-activation backward kernel recomputes ``h`` and turns ``(dh, g, u)`` into ``(h, dg, du)``
   in place;
3. ``dA_d = s_d (dY B_d)^T h``, ``dB_d = s_d dY^T (h A_d^T)``;
4. gate/up as in ``lora_linear``: ``dx = dg W_g + du W_u + [z_g z_u] [A_g; A_u]``.
Peak memory of the MLP in training drops from five N x I tensors (PEFT + transformers) to two.
"""

from functools import partial

import torch
import torch.nn.functional as F

from tunesmith.kernels.geglu import geglu_backward, geglu_forward
from tunesmith.kernels.lora_linear import Projection, dense_weight, lora_projections_reference
from tunesmith.kernels.swiglu import swiglu_backward, swiglu_forward

__all__ = ["ACTIVATIONS", "lora_mlp_reference", "LoRAMLPFunction", "lora_mlp"]

# The gate's activation by name: (forward kernel, backward kernel, PyTorch reference).
ACTIVATIONS = {
    "silu": (swiglu_forward, swiglu_backward, F.silu),
    "gelu_tanh": (geglu_forward, geglu_backward, partial(F.gelu, approximate="tanh")),
}


def lora_mlp_reference(
    x: torch.Tensor, gate: Projection, up: Projection, down: Projection, activation: str = "silu"
) -> torch.Tensor:
    """Pure PyTorch through autograd, as transformers' gated MLPs with PEFT LoRA layers."""
    g, u = lora_projections_reference(x, [gate, up])
    return lora_projections_reference(ACTIVATIONS[activation][2](g) * u, [down])[0]


def _lora_out(x2: torch.Tensor, p: Projection, xa: torch.Tensor | None) -> torch.Tensor:
    y = F.linear(x2, dense_weight(p.weight, x2.dtype))
    if xa is not None:
        y.addmm_(xa, p.lora_b.to(x2.dtype).t(), alpha=p.scaling)
    return y


def _grads_ab(p: Projection, g: torch.Tensor, inp: torch.Tensor, inp_a: torch.Tensor | None):
    """(z, dA, dB) for one adapter given the output gradient ``g`` and its input ``inp``."""
    if p.lora_a is None:
        return None, None, None
    z = (g @ p.lora_b.to(g.dtype)) * p.scaling
    da = (z.t() @ inp).to(p.lora_a.dtype)
    db = ((g.t() @ inp_a) * p.scaling).to(p.lora_b.dtype)
    return z, da, db


class LoRAMLPFunction(torch.autograd.Function):
    """``apply(x, scalings, activation, Wg, Ag, Bg, Wu, Au, Bu, Wd, Ad, Bd)``; adapters may be None; no
    biases; ``activation`` a key of ``ACTIVATIONS``."""

    @staticmethod
    def forward(ctx, x, scalings, activation, wg, ag, bg, wu, au, bu, wd, ad, bd):
        gate, up, down = (
            Projection(w, None, a, b, s)
            for (w, a, b), s in zip(((wg, ag, bg), (wu, au, bu), (wd, ad, bd)), scalings, strict=True)
        )
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xa_g = x2 @ ag.to(x.dtype).t() if ag is not None else None
        xa_u = x2 @ au.to(x.dtype).t() if au is not None else None
        g = _lora_out(x2, gate, xa_g)
        u = _lora_out(x2, up, xa_u)
        h = ACTIVATIONS[activation][0](g, u)
        ha_d = h @ ad.to(x.dtype).t() if ad is not None else None
        # Not a view of a temporary.
        out = F.linear(h.view(*shape[:-1], -1), dense_weight(down.weight, x.dtype))
        if ha_d is not None:
            out.view(-1, out.shape[-1]).addmm_(ha_d, down.lora_b.to(x.dtype).t(), alpha=down.scaling)
        del h
        ctx.projections, ctx.activation = (gate, up, down), activation
        ctx.save_for_backward(x2, g, u, xa_g, xa_u, ha_d)
        ctx.x_shape = shape
        ctx.consumed = False
        return out

    @staticmethod
    def backward(ctx, dy):
        x2, g, u, xa_g, xa_u, ha_d = ctx.saved_tensors
        gate, up, down = ctx.projections
        dy = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        dh = dy @ dense_weight(down.weight, x2.dtype)
        z_d = None
        if down.lora_a is not None:
            z_d = (dy @ down.lora_b.to(dy.dtype)) * down.scaling
            dh.addmm_(z_d, down.lora_a.to(dy.dtype))
        if ctx.consumed:
            raise RuntimeError(
                "tunesmith's fused LoRA MLP reuses its saved activations as gradient buffers, so its "
                "backward runs once per forward; backward(retain_graph=True) followed by a second backward "
                "is not supported."
            )
        ctx.consumed = True
        # In place over the saved g and u: the backward needs no N x I buffers of its own.
        h, dg, du = ACTIVATIONS[ctx.activation][1](dh, g, u, in_place=True)
        dd = (None, None)
        if z_d is not None:
            dd = ((z_d.t() @ h).to(down.lora_a.dtype), ((dy.t() @ ha_d) * down.scaling).to(down.lora_b.dtype))
        del h
        z_g, da_g, db_g = _grads_ab(gate, dg, x2, xa_g)
        z_u, da_u, db_u = _grads_ab(up, du, x2, xa_u)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = dg @ dense_weight(gate.weight, x2.dtype)
            dx.addmm_(du, dense_weight(up.weight, x2.dtype))
            if z_g is not None:
                dx.addmm_(z_g, gate.lora_a.to(dx.dtype))
            if z_u is not None:
                dx.addmm_(z_u, up.lora_a.to(dx.dtype))
            dx = dx.view(ctx.x_shape)
        return dx, None, None, None, da_g, db_g, None, da_u, db_u, None, *dd


def lora_mlp(
    x: torch.Tensor, gate: Projection, up: Projection, down: Projection, activation: str = "silu"
) -> torch.Tensor:
    """The MLP with its adapters: the fused function on CUDA, the autograd reference elsewhere."""
    from tunesmith.kernels._triton import on_gpu

    if on_gpu(x):
        flat = [t for p in (gate, up, down) for t in (p.weight, p.lora_a, p.lora_b)]
        return LoRAMLPFunction.apply(x, [gate.scaling, up.scaling, down.scaling], activation, *flat)
    return lora_mlp_reference(x, gate, up, down, activation)
