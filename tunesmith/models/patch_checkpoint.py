"""Smart gradient checkpointing: recompute only as many decoder layers as the memory budget requires.

Recomputing a layer in backward costs about a third more arithmetic for that layer; keeping its
activations costs memory. Before each training forward, a hook on the decoder counts the tokens,
estimates what one layer keeps for backward, and checkpoints the fewest layers that fit the budget
(``max_memory_gb``, or most of the card). When even checkpointing every layer does not fit and
``offload`` is on, each checkpointed layer's input goes to pinned CPU memory on a side stream and comes
back for the recompute. It works through transformers' own switch on each decoder layer
(``GradientCheckpointingLayer.gradient_checkpointing`` and ``_gradient_checkpointing_func``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["CheckpointPlan", "plan_checkpointing", "layer_bytes_per_token", "SmartCheckpointing"]

# Headroom kept free of activations: the allocator's fragmentation, the loss chunk, optimizer steps.
SAFETY = 1.15
RESERVE_BYTES = 1.5 * 2**30


@dataclass
class CheckpointPlan:
    """How many layers recompute (the first ``checkpointed``), and whether their inputs go to CPU."""

    layers: int
    checkpointed: int
    offload: bool
    budget_gib: float
    estimate_gib: float


def layer_bytes_per_token(config, element_bytes: int = 2) -> tuple[int, int]:
    """(bytes one decoder layer keeps per token without checkpointing, bytes it keeps when checkpointed).

    Without recompute the fast path keeps: the layer input and the mid-layer residual (2h), the two norm
    outputs (2h), q and the attention output (2h), k and v (2 x kv), gate and up (2 x I).
    """
    h = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = config.num_key_value_heads * head_dim
    full = (6 * h + 2 * kv + 2 * config.intermediate_size) * element_bytes
    return full, h * element_bytes


def plan_checkpointing(
    layers: int, tokens: int, full_per_token: int, kept_per_token: int, free_bytes: float, offload: bool
) -> CheckpointPlan:
    """The fewest checkpointed layers whose activations fit ``free_bytes``.

    With k of L layers checkpointed the activations take ``(L-k) F + k C + F`` (the last term: one layer
    recomputed at a time in backward), where F and C are a layer's full and checkpointed bytes.
    """
    full, kept = full_per_token * tokens * SAFETY, kept_per_token * tokens
    need_all = layers * full
    k = 0
    if need_all > free_bytes:
        k = math.ceil((need_all + full - free_bytes) / max(full - kept, 1))
        k = min(layers, max(k, 0))
    estimate = (layers - k) * full + (k * kept + full if k else 0)
    go_cpu = offload and k == layers and estimate > free_bytes
    if go_cpu:
        estimate = full
    return CheckpointPlan(layers, k, go_cpu, free_bytes / 2**30, estimate / 2**30)


class _OffloadedCheckpoint(torch.autograd.Function):
    """Checkpoint whose saved input lives in pinned CPU memory between forward and backward."""

    @staticmethod
    def forward(ctx, run, stream, _anchor, hidden):
        with torch.no_grad():
            out = run(hidden)
        buf = torch.empty(hidden.shape, dtype=hidden.dtype, device="cpu", pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(hidden.device))
        with torch.cuda.stream(stream):
            buf.copy_(hidden, non_blocking=True)
        hidden.record_stream(stream)  # the GPU copy may be freed only after the transfer
        ctx.run, ctx.stream, ctx.buf, ctx.device = run, stream, buf, hidden.device
        return out

    @staticmethod
    def backward(ctx, grad_out):
        torch.cuda.current_stream(ctx.device).wait_stream(ctx.stream)
        hidden = ctx.buf.to(ctx.device, non_blocking=True).requires_grad_(True)
        with torch.enable_grad():
            out = ctx.run(hidden)
        torch.autograd.backward(out, grad_out)
        return None, None, None, hidden.grad


class SmartCheckpointing:
    """Decides, before every training forward, which decoder layers recompute; installed by the fast path."""

    def __init__(self, decoder: torch.nn.Module, layers, config, max_memory_gb: float | None, offload: bool):
        self.decoder, self.layers, self.config = decoder, list(layers), config
        self.max_memory_gb, self.offload = max_memory_gb, offload
        self.last_plan: CheckpointPlan | None = None
        self._saved = [
            (layer.__dict__.get("gradient_checkpointing"), layer.__dict__.get("_gradient_checkpointing_func"))
            for layer in self.layers
        ]
        self._anchor = torch.zeros((), requires_grad=True)  # makes backward run even for a frozen input
        self._stream = None
        self._handle = decoder.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def _budget(self, device: torch.device) -> float:
        total = torch.cuda.get_device_properties(device).total_memory
        cap = total * 0.92 if self.max_memory_gb is None else min(total, self.max_memory_gb * 2**30)
        return cap - torch.cuda.memory_allocated(device) - RESERVE_BYTES

    def _before_forward(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if x is None or not x.is_cuda or not module.training or not torch.is_grad_enabled():
            return None
        tokens = x.shape[0] * x.shape[1]
        full, kept = layer_bytes_per_token(self.config)
        plan = plan_checkpointing(len(self.layers), tokens, full, kept, self._budget(x.device), self.offload)
        self.last_plan = plan
        for i, layer in enumerate(self.layers):
            layer.gradient_checkpointing = i < plan.checkpointed
            layer._gradient_checkpointing_func = (
                self._offloaded if plan.offload else partial(checkpoint, use_reentrant=False)
            )
        return None

    def _offloaded(self, run, hidden, *rest):
        if rest or not hidden.is_cuda:
            return checkpoint(run, hidden, *rest, use_reentrant=False)
        if self._stream is None:
            self._stream = torch.cuda.Stream(hidden.device)
        return _OffloadedCheckpoint.apply(run, self._stream, self._anchor, hidden)

    def remove(self) -> None:
        """Remove the hook and give every layer back its own checkpointing switch."""
        self._handle.remove()
        for layer, (flag, func) in zip(self.layers, self._saved, strict=True):
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", func)):
                if value is None:
                    layer.__dict__.pop(name, None)
                else:
                    setattr(layer, name, value)
