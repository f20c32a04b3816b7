"""A mixture of experts' forward with LoRA applied to each expert's tokens, not by rebuilding the stacks.

PEFT adapts an expert stack (a 3-D parameter named in ``target_parameters``) by parametrizing it: each
forward builds the weight plus its update, a 16-bit copy of the whole stack, and autograd keeps that copy for
backward and computes its full gradient, which PEFT then reduces to the two factors (1.2 GB kept a layer on
Qwen3-30B-A3B, and a weight gradient as large as the forward's products). Here the tokens are sorted by expert
once, and each projection is ``x W_e^T + s (x A_e^T) B_e^T`` over the groups:
- the frozen stack is read in the forward and read again in the backward (dequantized each time, a slice of
  experts at a time, when it is kept as 4-bit codes), and never saved;
- the low-rank factors get their gradients from the two small products.
On a GPU the groups go through PyTorch's grouped matrix product; elsewhere through
:func:`grouped_linear_reference`, one product per expert.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.fast_path.modules import keep_base
from tunesmith.models.expert_stacks import STACK_NAMES, dense_stack, expert_slices
from tunesmith.models.unwrap import without_param_wrappers

__all__ = ["FastMoEBlock", "grouped_linear", "grouped_linear_reference", "DENSE_SLICE_BYTES"]

# Most bytes of a 4-bit stack dequantized at one time: the block reads such a stack a slice of experts at a
# time (0.75 GiB of Qwen3-30B-A3B's gate_up_proj in bf16 becomes three 0.25-GiB slices). The slices' row
# bounds cost one host sync per block forward.
DENSE_SLICE_BYTES = 256 * 2**20

# (first, second, scale) of one adapted stack: its update to ``x @ W_e^T`` is
# ``scale * x @ first_e @ second_e``
# with first (E, in, rank) and second (E, rank, out).
Factors = tuple[torch.Tensor, torch.Tensor, float]


def grouped_linear_reference(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x`` (S, K) in groups ending at ``offsets`` (one per expert, cumulative), times ``weight`` (E, K, N):
    row block e of the result is ``x[block e] @ weight[e]``. One product per non-empty group."""
    pieces, start = [], 0
    for expert, end in enumerate(offsets.tolist()):
        if end > start:
            pieces.append(x[start:end] @ weight[expert])
        start = end
    if not pieces:
        return x.new_zeros(x.shape[0], weight.shape[-1])
    return torch.cat(pieces)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """:func:`grouped_linear_reference`'s result, through PyTorch's grouped product where it takes these
    tensors (a CUDA card of compute capability 8 or more, bf16, 16-byte aligned strides)."""
    if _grouped_mm_takes(x, weight):
        return _GROUPED_MM(x, weight, offs=offsets)
    return grouped_linear_reference(x, weight, offsets)


# torch.nn.functional.grouped_mm from PyTorch 2.10; the same kernel was torch._grouped_mm before.
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _grouped_mm_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not (_GROUPED_MM is not None and x.is_cuda and x.dtype == weight.dtype == torch.bfloat16):
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False

    def aligned(t: torch.Tensor) -> bool:
        strides = t.stride()[-2:]
        return t.data_ptr() % 16 == 0 and 1 in strides and all(s == 1 or s * 2 % 16 == 0 for s in strides)

    return x.stride(-1) == 1 and aligned(x) and aligned(weight)


class _FrozenGroupedLinear(torch.autograd.Function):
    """``x @ W_e^T`` per group for a frozen stack that ``weight_of(experts)`` gives a slice at a time
    (E_slice, out, in), read again in the backward instead of being saved."""

    @staticmethod
    def forward(ctx, x, offsets, weight_of: Callable[[slice], torch.Tensor], slices, bounds):
        ctx.weight_of, ctx.slices, ctx.bounds = weight_of, slices, bounds
        ctx.save_for_backward(offsets)
        return _by_slices(x, offsets, slices, bounds, lambda experts: weight_of(experts).transpose(-2, -1))

    @staticmethod
    def backward(ctx, grad):
        (offsets,) = ctx.saved_tensors
        grad_x = _by_slices(grad.contiguous(), offsets, ctx.slices, ctx.bounds, ctx.weight_of)
        return grad_x, None, None, None, None


def _row_bounds(ends: list[int] | None, slices: list[slice]) -> list[int] | None:
    """Where each slice of experts' rows start and end, from the groups' ``ends`` on the host; None for one
    slice."""
    if len(slices) == 1:
        return None
    return [0, *(ends[experts.stop - 1] for experts in slices)]


def _by_slices(
    x: torch.Tensor,
    offsets: torch.Tensor,
    slices: list[slice],
    bounds: list[int] | None,
    weight_of: Callable[[slice], torch.Tensor],
) -> torch.Tensor:
    """:func:`grouped_linear` of ``x`` with a weight taken one slice of experts at a time, so that only one
    slice is ever dequantized."""
    if bounds is None:
        return grouped_linear(x, weight_of(slices[0]), offsets)
    out = None
    for experts, start, stop in zip(slices, bounds, bounds[1:], strict=False):
        if stop == start:
            continue
        product = grouped_linear(x[start:stop], weight_of(experts), offsets[experts] - start)
        if out is None:
            out = x.new_empty(x.shape[0], product.shape[-1])
        out[start:stop] = product
    return out if out is not None else x.new_zeros(0, weight_of(slices[0]).shape[-1])


class FastMoEBlock(nn.Module):
    """A mixture-of-experts block (a ``gate`` router, transformers' ``experts`` with 3-D ``gate_up_proj`` and
    ``down_proj``), its experts with or without PEFT's LoRA on them, in 16-bit or as 4-bit stacks
    (``models/expert_stacks.py``), run per token group while training. The router and the experts stay
    registered under their names, so PEFT (merge, save, adapter switches) still sees its ``ParamWrapper``\\ s.
    Falls back to the block's own forward without gradients (generation, whose CUDA graph needs no host sync)
    and where it cannot read the adapters (several active, merged, dropout)."""

    @classmethod
    def can_wrap(cls, block: nn.Module) -> bool:
        """Whether ``block`` routes with ``gate`` to transformers' experts module (possibly inside PEFT's
        ``ParamWrapper``\\ s) of two untransposed 3-D stacks, no bias and a gated activation, and has no
        shared expert."""
        experts = getattr(block, "experts", None)
        if experts is None or not hasattr(block, "gate") or hasattr(block, "shared_expert"):
            return False
        base, _ = without_param_wrappers(experts)
        stacks = [base._parameters.get(n) for n in STACK_NAMES]
        return (
            all(s is not None and s.dim() == 3 for s in stacks)
            and not getattr(base, "is_transposed", False)
            and not getattr(base, "has_bias", False)
            and hasattr(base, "act_fn")
            and hasattr(base, "num_experts")
        )

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        keep_base(self, base_layer, tuple(base_layer._modules))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T, H): each token's weighted sum over the experts its router chose."""
        base, wrappers = without_param_wrappers(self.experts)
        factors = _adapter_factors(wrappers)
        frozen = not any(base._parameters[n].requires_grad for n in STACK_NAMES)
        if not torch.is_grad_enabled() or factors is None or not frozen:
            return self.base_layer(hidden_states)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        routed = self.gate(flat)  # transformers 5's routers: (logits, top-k weights, top-k experts)
        if not (isinstance(routed, tuple) and len(routed) == 3):
            return self.base_layer(hidden_states)
        _, weights, chosen = routed
        return _grouped_experts(base, factors, flat, chosen, weights).reshape(hidden_states.shape)


def _grouped_experts(
    base: nn.Module,
    factors: dict[str, Factors],
    hidden: torch.Tensor,
    chosen: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """The experts' output for ``hidden`` (tokens, H), each token sent to its ``chosen`` (tokens, k) experts
    and their outputs summed with ``weights`` (tokens, k)."""
    expert_ids = chosen.reshape(-1)
    order = torch.argsort(expert_ids, stable=True)
    tokens = order // chosen.shape[-1]
    offsets = torch.bincount(expert_ids, minlength=base.num_experts)[: base.num_experts]
    offsets = offsets.cumsum(0).to(torch.int32)
    slices = {name: expert_slices(base, name, DENSE_SLICE_BYTES) for name in STACK_NAMES}
    # The groups' ends on the host (one sync), only where a stack is read in slices.
    ends = offsets.tolist() if any(len(s) > 1 for s in slices.values()) else None

    def project(x: torch.Tensor, name: str) -> torch.Tensor:
        bounds = _row_bounds(ends, slices[name])
        out = _FrozenGroupedLinear.apply(x, offsets, partial(dense_stack, base, name), slices[name], bounds)
        if name in factors:
            first, second, scale = factors[name]
            low_rank = grouped_linear(x, _column_major(first.to(x.dtype)), offsets)
            out = out + scale * grouped_linear(low_rank, second.to(x.dtype).contiguous(), offsets)
        return out

    rows = hidden[tokens].to(base._parameters["gate_up_proj"].dtype)  # grouped_mm takes no autocast
    gate, up = project(rows, "gate_up_proj").chunk(2, dim=-1)
    out = project(base.act_fn(gate) * up, "down_proj")
    out = out * weights.reshape(-1)[order, None]
    return torch.zeros_like(hidden).index_add_(0, tokens, out.to(hidden.dtype))


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` (E, K, N) laid out with K contiguous: the grouped product's right operand then needs only K,
    not the LoRA rank N, to be a multiple of 8."""
    return t.transpose(-2, -1).contiguous().transpose(-2, -1)


def _adapter_factors(wrappers: list[nn.Module]) -> dict[str, Factors] | None:
    """Each adapted stack's factors by stack name, from its PEFT ``ParamWrapper`` ({} without LoRA on the
    experts); None where this forward cannot apply them."""
    factors = {wrapper.parameter_name: _factors(wrapper) for wrapper in wrappers}
    return None if None in factors.values() else factors


def _factors(wrapper: nn.Module) -> Factors | None:
    """PEFT's per-expert factors of one ``ParamWrapper``: ``lora_A`` holds (experts x rank, d_A) and
    ``lora_B`` (d_B, rank x experts), and expert e's update is ``B_e A_e`` (d_B, d_A) when PEFT swapped the
    stack's in and out features (stacks stored experts x out x in), else its transpose."""
    names = list(wrapper.active_adapters)
    if wrapper.merged or wrapper.disable_adapters or len(names) != 1 or names[0] not in wrapper.lora_A:
        return None
    name = names[0]
    if not isinstance(wrapper.lora_dropout[name], nn.Identity) or wrapper.use_dora.get(name):
        return None
    if getattr(wrapper, "lora_bias", {}).get(name):
        return None
    experts = wrapper.num_experts
    a, b = wrapper.lora_A[name].weight, wrapper.lora_B[name].weight
    a = a.reshape(experts, -1, a.shape[-1])  # (E, r, d_A)
    b = b.reshape(b.shape[0], -1, experts).permute(2, 0, 1)  # (E, d_B, r)
    if getattr(wrapper, "_did_swap_in_out_features", False):  # W_e is (d_B, d_A): x @ A_e^T @ B_e^T
        return a.transpose(-2, -1), b.transpose(-2, -1), wrapper.scaling[name]
    return b, a, wrapper.scaling[name]  # W_e is (d_A, d_B): x @ B_e @ A_e
