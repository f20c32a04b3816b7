"""Smart gradient checkpointing: recompute only as many decoder layers as the memory budget requires.

Recomputing a layer in backward costs about a third more arithmetic for that layer; keeping its
activations costs memory. Before each training forward, a hook on the decoder counts the tokens,
estimates what one layer keeps for backward, and checkpoints the fewest layers that fit the budget
(``max_memory_gb``, or most of the card, and never more than the card has free: under DDP each rank plans
from its own card). When even checkpointing every layer does not fit and
``offload`` is on, each checkpointed layer's input goes to pinned CPU memory and comes back, one layer
ahead, for the recompute; from ``KEEP_ATTENTION_MIN_TOKENS`` tokens per sequence the attention result
goes too, so the recompute skips attention (``offload.py``). It works through transformers' own
switch on each decoder layer (``GradientCheckpointingLayer.gradient_checkpointing`` and
``_gradient_checkpointing_func``). On a CPU the same plan runs on transformers' own path (no fast path
there), against a share of the memory the system can still give and with that path's larger per-token
count (``plain_layer_bytes_per_token``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from tunesmith._distributed import is_main_process
from tunesmith.fast_path.offload import LayerSlot, OffloadedLayer
from tunesmith.kernels.fused_linear_cross_entropy import CHUNK_LOGITS_BYTES
from tunesmith.kernels.nf4 import is_nf4_weight
from tunesmith.models.expert_stacks import STACK_NAMES, expert_slices, is_4bit_stack
from tunesmith.models.memory import available_host_bytes
from tunesmith.models.registry import family_of, head_dim_of

__all__ = [
    "CheckpointPlan",
    "plan_checkpointing",
    "reserve_bytes",
    "loss_peak_bytes",
    "largest_dequantized_bytes",
    "adapted_expert_bytes",
    "layer_bytes_per_token",
    "plain_layer_bytes_per_token",
    "attention_bytes_per_token",
    "keeps_attention",
    "SmartCheckpointing",
]

logger = logging.getLogger(__name__)

# Headroom on each layer's counted activations. What autograd saves matches the count within 2% (checked on
# CPU). The capped 8B runs once peaked ~19 MB per kept layer above the count: SDPA's math kernel, which padded
# batches of grouped-head models fell back to. With that gone (run 24) a 1.5 headroom ended 0.82 GiB under the
# cap, so 1.2 keeps about ten more layers (bench/NOTES.md, "The math kernel gone").
SAFETY = 1.2
# Kept free beside what ``reserve_bytes`` counts: the allocator's rounding, the optimizer's temporaries,
# cuBLAS workspaces, attention's float32 accumulators.
MARGIN_BYTES = 384 * 2**20
# Bytes per token and vocabulary word that the plain loss (no fused head: Gemma 2's capped logits, an adapted
# or 4-bit output layer) holds at its peak in backward: the 16-bit logits, Gemma 2's capped copy, the float32
# log-probabilities the cross-entropy keeps, and their float32 gradients twice over.
PLAIN_LOSS_BYTES_PER_LOGIT = 16
# From this many tokens per sequence an offloaded layer keeps its attention result in CPU memory too:
# attention's share of the recompute grows with the sequence (a third of it at 16k, over half at 65k).
KEEP_ATTENTION_MIN_TOKENS = 8192
# Share of the host's available memory that kept attention results, or a CPU run's activations, may take.
HOST_SHARE = 0.6


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
    outputs (2h), q and the attention output (2 x q, the heads' width, which is h in most families), k and v
    (2 x kv), gate and up (2 x I); with per-head norms (Qwen3, Gemma 3) also q and k before their norm; with
    sandwich norms (Gemma) also the attention's and the MLP's outputs before theirs (2h); with fused
    projections (Phi-3) also the activation's output (I). A mixture of experts (Qwen3-MoE) keeps, instead of
    the MLP's, for each of the k experts a token goes to: its copy of the input and the expert's output (2h),
    gate-up and the activation (3 x the expert width); and the router's float32 logits.
    """
    h = config.hidden_size
    q = config.num_attention_heads * head_dim_of(config)
    kv = config.num_key_value_heads * head_dim_of(config)
    family = family_of(getattr(config, "model_type", "") or "")
    head_norms = q + kv if family is not None and family.head_norms else 0
    sandwich = 2 * h if family is not None and family.sandwich_norms else 0
    mlp = (3 if family is not None and family.fused_projections else 2) * config.intermediate_size
    experts = getattr(config, "num_experts", 0) or 0
    if experts:
        chosen = config.num_experts_per_tok
        mlp = chosen * (2 * h + 3 * config.moe_intermediate_size) + 2 * experts
    full = (4 * h + 2 * q + 2 * kv + mlp + head_norms + sandwich) * element_bytes
    return full, h * element_bytes


def plain_layer_bytes_per_token(config, element_bytes: int = 4) -> tuple[int, int]:
    """(bytes, checkpointed bytes) one decoder layer keeps per token on transformers' own path, which keeps
    more than the fast path: its norms' float32 intermediates, the MLP's activation and product, each LoRA
    projection's input. Three times the fast path's count: measured 2.45x on SmolLM2-135M in float32, and
    ``tests/fast_path/test_checkpointing.py`` checks it stays an upper bound."""
    full, kept = layer_bytes_per_token(config, element_bytes)
    return 3 * full, kept


def attention_bytes_per_token(config) -> int:
    """Host bytes one layer's kept attention result takes per token: q, k, v, output (bf16), log-sum-exp."""
    heads, head_dim = config.num_attention_heads, head_dim_of(config)
    return (2 * heads * head_dim + 2 * config.num_key_value_heads * head_dim) * 2 + heads * 4


def keeps_attention(config, layers: int, batch: int, seq: int) -> bool:
    """Whether offloaded layers also keep their attention result: long sequences, if host memory allows."""
    if seq < KEEP_ATTENTION_MIN_TOKENS:
        return False
    per_token = attention_bytes_per_token(config) + layer_bytes_per_token(config)[1]
    return layers * batch * seq * per_token <= HOST_SHARE * available_host_bytes()


def reserve_bytes(
    tokens: int,
    full_per_token: int,
    pending_grad_bytes: int,
    dequantized_bytes: int = 0,
    loss_bytes: int = CHUNK_LOGITS_BYTES,
    layer_fixed: int = 0,
) -> int:
    """Bytes a training step needs beside the planned activations: the loss's logits at their peak
    (``loss_bytes``, one chunk of the fused loss by default: ``loss_peak_bytes``), the gradients of trainable
    parameters not allocated yet (the first micro-batch of each optimizer step), the working set of the layer
    being differentiated (about what it keeps, and the gradient of its adapted expert stacks,
    ``layer_fixed``), the largest 4-bit weight dequantized for its product (``dequantized_bytes``), and
    ``MARGIN_BYTES``."""
    working_set = full_per_token * tokens + layer_fixed
    return loss_bytes + pending_grad_bytes + working_set + dequantized_bytes + MARGIN_BYTES


def loss_peak_bytes(tokens: int, plain_loss_vocab: int | None) -> int:
    """Bytes the loss's logits take at their peak: one chunk of the fused head's (``plain_loss_vocab`` None),
    else the plain loss's logits for all ``tokens`` over a vocabulary of ``plain_loss_vocab`` words."""
    if plain_loss_vocab is None:
        return CHUNK_LOGITS_BYTES
    return tokens * plain_loss_vocab * PLAIN_LOSS_BYTES_PER_LOGIT


def largest_dequantized_bytes(module: torch.nn.Module, element_bytes: int = 2) -> int:
    """Bytes of the largest 4-bit weight in ``module`` once dequantized (the fused products make one at a
    time and drop it), or of a mixture of experts' 4-bit stacks (one layer's, dequantized for its forward;
    under :class:`~tunesmith.fast_path.experts.FastMoEBlock` one slice of one stack); 0 without 4-bit
    weights."""
    from tunesmith.fast_path.experts import DENSE_SLICE_BYTES

    sliced = _inside_fast_moe_blocks(module)

    def stacks(m: torch.nn.Module) -> int:
        names = [n for n in STACK_NAMES if is_4bit_stack(m, n)]
        if id(m) not in sliced:
            return sum(getattr(m, n).numel() for n in names)
        per_slice = [
            (experts.stop - experts.start) * getattr(m, n)[0].numel()
            for n in names
            for experts in expert_slices(m, n, DENSE_SLICE_BYTES)
        ]
        return max(per_slice, default=0)

    sizes = [math.prod(p.quant_state.shape) for p in module.parameters() if is_nf4_weight(p)]
    return max(sizes + [stacks(m) for m in module.modules()], default=0) * element_bytes


def adapted_expert_bytes(layers) -> int:
    """Bytes one decoder layer keeps for backward whatever the tokens: with LoRA on a mixture of experts'
    3-D stacks (PEFT's ``ParamWrapper``), each forward rebuilds every adapted stack as weight plus update from
    the low-rank factors cast to the stack's dtype, and keeps that 16-bit copy and the factors (checked with
    saved-tensor hooks on CPU). 1.2 GB a layer on Qwen3-30B-A3B. The largest over ``layers``; 0 without
    adapted experts, or where :class:`~tunesmith.fast_path.experts.FastMoEBlock` runs them (no copy)."""
    from peft.tuners.lora import ParamWrapper

    def one(layer) -> int:
        total = 0
        fast = _inside_fast_moe_blocks(layer)
        for wrapper in (m for m in layer.modules() if isinstance(m, ParamWrapper) and id(m) not in fast):
            stack = getattr(wrapper.get_base_layer(), wrapper.parameter_name)
            factors = sum(
                wrapper.lora_A[a].weight.numel() + wrapper.lora_B[a].weight.numel() for a in wrapper.lora_A
            )
            total += (stack.numel() + factors) * stack.element_size()
        return total

    return max((one(layer) for layer in layers), default=0)


def _inside_fast_moe_blocks(module: torch.nn.Module) -> set[int]:
    """The ids of the modules in ``module`` that a :class:`~tunesmith.fast_path.experts.FastMoEBlock` runs."""
    from tunesmith.fast_path.experts import FastMoEBlock

    return {id(m) for block in module.modules() if isinstance(block, FastMoEBlock) for m in block.modules()}


def plan_checkpointing(
    layers: int,
    tokens: int,
    full_per_token: int,
    kept_per_token: int,
    free_bytes: float,
    offload: bool,
    full_fixed: int = 0,
) -> CheckpointPlan:
    """The fewest checkpointed layers whose activations fit ``free_bytes``.

    With k of L layers checkpointed the activations take ``(L-k) F + k C + F`` (the last term: one layer
    recomputed at a time in backward), where F and C are a layer's full and checkpointed bytes. F also holds
    ``full_fixed``, what a layer keeps whatever the tokens (``adapted_expert_bytes``).
    """
    full, kept = (full_per_token * tokens + full_fixed) * SAFETY, kept_per_token * tokens
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


def _say_plan(plan: CheckpointPlan) -> None:
    """One line on the main process: what recomputes, where it waits, how much."""
    if not is_main_process():
        return
    where = ", their inputs in pinned CPU memory" if plan.offload else ""
    logger.warning(
        "checkpointing plan: %d of %d layers recompute%s; activations ~%.1f GiB of the %.1f GiB free for "
        "them (max_memory_gb caps it)",
        plan.checkpointed,
        plan.layers,
        where,
        plan.estimate_gib,
        max(plan.budget_gib, 0.0),
    )


def _say_cap_too_low(
    max_memory_gb: float | None, held_bytes: int, reserve: int, budget: float, leanest: float
) -> None:
    """Once, on the main process: the ``budget`` left for activations is below what even the leanest plan
    (every layer recomputed) keeps, ``leanest`` bytes, so the peak will pass the cap."""
    if not is_main_process():
        return
    gib = 2**30
    held_part = (
        f"the weights, LoRA parameters and optimizer state hold {held_bytes / gib:.1f} GiB, and "
        if held_bytes
        else ""
    )
    room = "no room" if budget <= 0 else f"{budget / gib:.2f} GiB"
    needed = f", and even with every layer recomputed they need {leanest / gib:.2f} GiB"
    if max_memory_gb is None:
        cause = f"The device has {room} left for activations{needed}"
        way_out = "Free the device (another process may hold it), load in 4-bit, or shorten max_seq_length."
    else:
        cause = f"max_memory_gb={max_memory_gb:g} leaves {room} for activations{needed}"
        way_out = (
            f"Raise max_memory_gb to at least {(held_bytes + reserve + leanest) / gib + 0.5:.1f}, "
            "or load the model in 4-bit if it is not."
        )
    logger.warning(
        "%s: %s%.1f GiB stays free for the loss and the optimizer step. Training goes on with every layer "
        "recomputed (inputs in CPU memory where offload is on), but the peak will be above the cap. %s",
        cause,
        held_part,
        reserve / gib,
        way_out,
    )


class SmartCheckpointing:
    """Decides, before every training forward, which decoder layers recompute; installed by the fast path."""

    def __init__(
        self,
        decoder: torch.nn.Module,
        layers,
        config,
        max_memory_gb: float | None,
        offload: bool,
        bytes_per_token=layer_bytes_per_token,
        on_cpu: bool = False,
        plain_loss_vocab: int | None = None,
    ):
        self.decoder, self.layers, self.config = decoder, list(layers), config
        self.max_memory_gb, self.offload = max_memory_gb, offload
        self.bytes_per_token = bytes_per_token  # (config) -> (full, checkpointed) bytes per token and layer
        # Which devices' forwards it plans: the GPU's, and a CPU's on transformers' own path (the fast path
        # on a CPU runs only under Triton's interpreter, in tests that set their plan by hand).
        self.devices = ("cuda", "cpu") if on_cpu else ("cuda",)
        # The vocabulary whose full logits the plain loss holds; None where the fused head chunks them.
        self.plain_loss_vocab = plain_loss_vocab
        self.last_plan: CheckpointPlan | None = None
        self.keep_attention = False
        # The plan is said when it first runs and again only when a batch needs more than any said before
        # (per-batch lengths vary, so it changes at most steps).
        self._said: CheckpointPlan | None = None
        self._said_cap_too_low = False
        self._saved = [
            (layer.__dict__.get("gradient_checkpointing"), layer.__dict__.get("_gradient_checkpointing_func"))
            for layer in self.layers
        ]
        self._dequantized_bytes = largest_dequantized_bytes(decoder)
        self._layer_fixed_bytes = adapted_expert_bytes(self.layers)  # the adapters are in place by now
        self._anchor = torch.zeros((), requires_grad=True)  # makes backward run even for a frozen input
        self._stream = None
        self._last_slot: LayerSlot | None = None
        # Per shape, decided once (pinned memory stays).
        self._keep_attention: dict[tuple[int, int], bool] = {}
        self._handle = decoder.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def _pending_grad_bytes(self) -> int:
        """Bytes the gradients of trainable parameters will take that are not allocated yet."""
        return sum(
            p.numel() * p.element_size()
            for p in self.decoder.parameters()
            if p.requires_grad and p.grad is None
        )

    def _budget(self, device: torch.device, reserve: int) -> float:
        """Bytes this process may fill with activations on its own card (each rank plans for its own), or
        on a CPU a share of the memory the system can still give; ``reserve`` stays free beside them."""
        if device.type == "cpu":
            free = HOST_SHARE * available_host_bytes()
            cap = free if self.max_memory_gb is None else min(free, self.max_memory_gb * 2**30)
            return cap - reserve
        total = torch.cuda.get_device_properties(device).total_memory
        cap = total * 0.92 if self.max_memory_gb is None else min(total, self.max_memory_gb * 2**30)
        allocated = torch.cuda.memory_allocated(device)
        # What other processes hold on this card (another rank, a server) is not there to plan with.
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - allocated
        return min(cap - allocated, free + cached) - reserve

    def _before_forward(self, module, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if (
            x is None
            or x.device.type not in self.devices
            or not module.training
            or not torch.is_grad_enabled()
        ):
            return None
        tokens = x.shape[0] * x.shape[1]
        full, kept = self.bytes_per_token(self.config)
        loss = loss_peak_bytes(tokens, self.plain_loss_vocab)
        fixed = self._layer_fixed_bytes
        reserve = reserve_bytes(
            tokens, full, self._pending_grad_bytes(), self._dequantized_bytes, loss, fixed
        )
        budget = self._budget(x.device, reserve)
        plan = plan_checkpointing(len(self.layers), tokens, full, kept, budget, self.offload, fixed)
        leanest = plan.estimate_gib * 2**30  # the plan recomputes every layer before it passes the budget
        if leanest > budget and not self._said_cap_too_low:
            self._said_cap_too_low = True
            held = torch.cuda.memory_allocated(x.device) if x.device.type == "cuda" else 0
            _say_cap_too_low(self.max_memory_gb, held, reserve, budget, leanest)
        keep = plan.offload and self._keeps_attention(x.shape[0], x.shape[1])
        self.apply_plan(plan, keep_attention=keep)
        return None

    def _keeps_attention(self, batch: int, seq: int) -> bool:
        if (batch, seq) not in self._keep_attention:
            self._keep_attention[batch, seq] = keeps_attention(self.config, len(self.layers), batch, seq)
        return self._keep_attention[batch, seq]

    def apply_plan(self, plan: CheckpointPlan, keep_attention: bool = False) -> None:
        """Set every layer's checkpointing switch as ``plan`` says (called before each training forward)."""
        said = self._said
        if said is None or (plan.offload, plan.checkpointed) > (said.offload, said.checkpointed):
            self._said = plan
            _say_plan(plan)
        self.last_plan, self.keep_attention = plan, keep_attention
        self._last_slot = None  # a new forward starts a new chain of offloaded layers
        for i, layer in enumerate(self.layers):
            layer.gradient_checkpointing = i < plan.checkpointed
            layer._gradient_checkpointing_func = (
                partial(self._offloaded, layer) if plan.offload else partial(checkpoint, use_reentrant=False)
            )

    def _offloaded(self, layer, run, hidden, *rest):
        if rest:
            return checkpoint(run, hidden, *rest, use_reentrant=False)
        if self._stream is None and hidden.is_cuda:
            self._stream = torch.cuda.Stream(hidden.device)
        stream = self._stream if hidden.is_cuda else None
        attention = getattr(layer, "self_attn", None)
        keep = self.keep_attention and hasattr(attention, "offload_slot")
        slot = LayerSlot(stream, self._last_slot, keep_attention=keep)
        self._last_slot = slot

        def run_in_slot(h):
            if keep:
                attention.offload_slot = slot
            try:
                return run(h)
            finally:
                if keep:
                    attention.offload_slot = None

        return OffloadedLayer.apply(run_in_slot, slot, self._anchor, hidden)

    def remove(self) -> None:
        """Remove the hook and give every layer back its own checkpointing switch."""
        self._handle.remove()
        for layer, (flag, func) in zip(self.layers, self._saved, strict=True):
            for name, value in (("gradient_checkpointing", flag), ("_gradient_checkpointing_func", func)):
                if value is None:
                    layer.__dict__.pop(name, None)
                else:
                    setattr(layer, name, value)
