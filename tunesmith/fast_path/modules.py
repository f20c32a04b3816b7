"""The modules the fast path swaps into a loaded Llama, Mistral, Qwen2, Qwen3, Gemma 2/3 or Phi-3 model.

Each wrapper registers the original module's children (or parameters) under their original names,
so ``state_dict`` keys, PEFT adapter names and ``named_modules`` paths stay exactly as they were
(checkpoints, adapters and exports see no difference). The original module is kept, unregistered, as
``base_layer``; ``unpatch`` puts it back. On CPU every wrapper computes the same math through the
pure-PyTorch references; on CUDA through the fused Triton kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path.packing import SDPA_BACKENDS
from tunesmith.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy
from tunesmith.kernels.lora_linear import Projection, lora_projections
from tunesmith.kernels.lora_mlp import lora_mlp
from tunesmith.kernels.rms_norm import rms_norm
from tunesmith.kernels.rope import apply_rope
from tunesmith.kernels.swiglu import swiglu

__all__ = [
    "FastAttention",
    "FastMLP",
    "FastRMSNorm",
    "FusedLMHead",
    "projection_of",
    "keep_base",
    "sdpa_computes",
]


def keep_base(wrapper: nn.Module, base: nn.Module, children: tuple[str, ...]) -> None:
    """Hold ``base`` unregistered and register its named children on ``wrapper`` under the same names, in
    ``base``'s own order (so ``state_dict`` lists them as before)."""
    wrapper.__dict__["base_layer"] = base
    order = [*base._parameters, *base._modules]
    for name in sorted(children, key=lambda n: order.index(n) if n in order else len(order)):
        setattr(wrapper, name, getattr(base, name))


def projection_of(module: nn.Module) -> Projection | None:
    """The frozen weight and LoRA factors of a linear layer, or None when the fused path cannot apply.

    Handles ``nn.Linear``, bitsandbytes NF4 ``Linear4bit`` and PEFT ``lora.Linear`` around either, with one
    active adapter, no dropout, no DoRA, not merged. Anything else (8-bit, several adapters) is None.
    """
    from peft.tuners.lora import LoraLayer

    if isinstance(module, LoraLayer):
        names = list(module.active_adapters)
        if module.merged or module.disable_adapters or len(names) != 1 or names[0] not in module.lora_A:
            return None
        name = names[0]
        if module.use_dora.get(name) or not isinstance(module.lora_dropout[name], nn.Identity):
            return None
        if getattr(module, "lora_bias", {}).get(name):
            return None
        base = projection_of(module.get_base_layer())
        if base is None:
            return None
        return Projection(
            base.weight,
            base.bias,
            module.lora_A[name].weight,
            module.lora_B[name].weight,
            module.scaling[name],
        )
    if not isinstance(module, nn.Linear):
        return None
    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if weight.dtype not in (torch.bfloat16, torch.float16, torch.float32) and (
        state is None or state.quant_type != "nf4"
    ):
        return None
    return Projection(weight, module.bias)


class FastRMSNorm(nn.Module):
    """Drop-in for a transformers RMSNorm: the Triton kernel on CUDA, the reference elsewhere.

    The original module is kept, unregistered, as ``base_layer``; its weight is registered here under
    the same name (shared, not copied), so ``state_dict`` keys do not change. ``weight_offset`` is the
    family's (``Family.norm_weight_offset``: 1 for Gemma, whose norms multiply by ``1 + w``).
    """

    def __init__(self, base_layer: nn.Module, weight_offset: float = 0.0):
        super().__init__()
        keep_base(self, base_layer, ("weight",))
        self.eps = float(getattr(base_layer, "variance_epsilon", getattr(base_layer, "eps", 1e-6)))
        self.weight_offset = weight_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.weight_offset)


def sdpa_computes(attention: nn.Module) -> bool:
    """Whether SDPA's causal attention computes what ``attention`` (transformers' module) does, its window
    aside: logits not soft-capped (Gemma 2 caps them, which SDPA cannot) and causal (not a bidirectional
    embedding model)."""
    return getattr(attention, "attn_logit_softcapping", None) is None and getattr(
        attention, "is_causal", True
    )


# Families whose sliding window is the config's alone (no per-layer flag): it applies to a longer sequence.
WINDOW_FROM_CONFIG = ("mistral", "phi3")


# Each training forward's masking decisions, by the forward's rotary cosine tensor (made anew per forward);
# an entry goes when that tensor does, after the backward.
_BATCH_MASKING: WeakIdKeyDictionary = WeakIdKeyDictionary()


class FastAttention(nn.Module):
    """Self-attention with LoRA fused into Q/K/V and O, in-place RoPE and SDPA (flash) attention; where the
    model normalises each head's query and key before RoPE (Qwen3's ``q_norm`` / ``k_norm``), so does this.
    Phi-3's one ``qkv_proj`` is one fused projection whose output splits into the query, key and value.

    Falls back to the original module for generation with a cache, other attention backends, sliding
    windows shorter than the sequence, soft-capped attention logits (Gemma 2), non-causal attention, RoPE on
    part of each head (Phi-4-mini), or projections the fused path cannot read.
    """

    CHILDREN = ("q_proj", "k_proj", "v_proj", "o_proj")
    FUSED_CHILDREN = ("qkv_proj", "o_proj")
    HEAD_NORMS = ("q_norm", "k_norm")

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.has_head_norms = all(getattr(base_layer, n, None) is not None for n in self.HEAD_NORMS)
        self.fused_qkv = hasattr(base_layer, "qkv_proj")
        self.children_names = self.FUSED_CHILDREN if self.fused_qkv else self.CHILDREN
        keep_base(self, base_layer, self.children_names + (self.HEAD_NORMS if self.has_head_norms else ()))
        self.head_dim = base_layer.head_dim
        self.scaling = base_layer.scaling
        self.config = base_layer.config
        kv_width = self.config.num_key_value_heads * self.head_dim
        self.qkv_widths = (self.config.num_attention_heads * self.head_dim, kv_width, kv_width)
        self.layer_idx = getattr(base_layer, "layer_idx", None)
        self.packed_mask: torch.Tensor | None = None  # set per forward by the packing hook (patch.py)
        # Set per training forward by the same hook: the batch is padded only after each row's last token,
        # so causal attention needs no padding mask (``packing.padding_only_after_rows``).
        self.padding_after_rows = False
        # Set around an offloaded layer's forward and recompute (checkpointing.py).
        self.offload_slot = None

    def _can_fuse(self, position_embeddings, kwargs, seq_len: int) -> bool:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        # A training step never reads its key/value cache back (transformers makes one when the config says
        # use_cache), so it is left alone there, as transformers' own checkpointed layers do.
        training = self.training and torch.is_grad_enabled()
        if position_embeddings is None or (cache is not None and not training):
            return False
        if getattr(self.config, "_attn_implementation", "sdpa") not in SDPA_BACKENDS:
            return False
        window = getattr(self.config, "sliding_window", None)
        # Qwen2 switches its window on explicitly.
        if getattr(self.config, "use_sliding_window", False) and window:
            return False
        if window and seq_len > window and getattr(self.config, "model_type", "") in WINDOW_FROM_CONFIG:
            return False  # the config's window applies once the sequence is longer than it
        if position_embeddings[0].shape[-1] != self.head_dim:
            return False  # RoPE on part of each head (Phi-4-mini), which the in-place kernel does not do
        if kwargs.get("output_attentions"):
            return False
        layer = self.base_layer
        # Gemma 2/3 mark their own local layers
        layer_window = getattr(layer, "sliding_window", None)
        if layer_window and seq_len > layer_window:
            return False
        return sdpa_computes(layer)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        """Same signature and result as the original attention: ``(output (B, T, H), None)``."""
        projections = [projection_of(getattr(self, n)) for n in self.children_names]
        if not self._can_fuse(position_embeddings, kwargs, hidden_states.shape[1]) or any(
            p is None for p in projections
        ):
            return self.base_layer(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                **kwargs,
            )
        b, t, _ = hidden_states.shape
        q, k, v = self._query_key_value(hidden_states, projections[:-1])
        if self.has_head_norms:  # (B, T, H, D) tensors of their own, which RoPE then rotates in place
            q = self.q_norm(q.view(b, t, -1, self.head_dim))
            k = self.k_norm(k.view(b, t, -1, self.head_dim))
        cos, sin = position_embeddings
        q, k = apply_rope(q, k, cos, sin, self.head_dim)  # (B, T, Hq, D), (B, T, Hkv, D)
        v = v.view(b, t, -1, self.head_dim)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, D) views for SDPA
        packed_mask, after_rows = self._batch_masking(cos)
        mask = attention_mask if attention_mask is None or attention_mask.dim() == 4 else None
        if after_rows:
            mask = None
        if packed_mask is not None and (mask is None or mask.dtype == torch.bool):
            mask = packed_mask if mask is None else mask & packed_mask

        def attend(q, k, v):
            if mask is not None and k.shape[1] != q.shape[1]:
                # No fused kernel takes a mask and grouped heads together (flash takes no mask, the
                # memory-efficient kernel no GQA), so SDPA would fall back to its math kernel, which keeps
                # B x H x T x T weights per layer for backward. Each query head gets its key and value.
                k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scaling,
                enable_gqa=q.shape[1] != k.shape[1],
            )  # fmt: skip

        out = attend(q, k, v) if self.offload_slot is None else self.offload_slot.attend(attend, q, k, v)
        out = out.transpose(1, 2).reshape(b, t, -1)
        return lora_projections(out, projections[-1:])[0], None

    def _batch_masking(self, cos: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
        """(packed mask, padding only after the rows) for this forward's batch. The packing hook sets them
        around the model's forward; a checkpointed layer's recompute runs in backward, after the hook has
        cleared them, so they are also kept for the batch's rotary tensor, which the recompute receives again
        (a recompute must attend as the forward did: same result, same saved tensors)."""
        if self.packed_mask is not None or self.padding_after_rows:
            _BATCH_MASKING[cos] = (self.packed_mask, self.padding_after_rows)
            return self.packed_mask, self.padding_after_rows
        return _BATCH_MASKING.get(cos, (None, False))

    def _query_key_value(self, hidden_states: torch.Tensor, projections: list[Projection]):
        """(q, k, v), each (B, T, width) and a tensor of its own (RoPE rotates q and k in place)."""
        if not self.fused_qkv:
            return lora_projections(hidden_states, projections)
        qkv = lora_projections(hidden_states, projections)[0]
        return tuple(part.contiguous() for part in qkv.split(self.qkv_widths, dim=-1))


# transformers' activation classes by the gated kernel that computes them (lora_mlp.ACTIVATIONS):
# x * sigmoid(x) (ACT2FN["silu"] is SiLUActivation) and Gemma's tanh-approximated GELU.
GATE_ACTIVATIONS = {
    "SiLU": "silu",
    "SiLUActivation": "silu",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
}
SILU_CLASSES = tuple(name for name, kernel in GATE_ACTIVATIONS.items() if kernel == "silu")


class FastMLP(nn.Module):
    """The gated MLP (SwiGLU, GeGLU) with LoRA fused into gate/up/down; falls back to the original when it
    cannot read it. Phi-3's one ``gate_up_proj`` is one fused projection whose output halves are the gate
    and the up projection, then one SwiGLU kernel and the down projection."""

    CHILDREN = ("gate_proj", "up_proj", "down_proj")
    FUSED_CHILDREN = ("gate_up_proj", "down_proj")

    @classmethod
    def can_wrap(cls, mlp: nn.Module) -> bool:
        """Whether ``mlp`` is a gated MLP of linear layers (not a mixture of experts)."""
        return all(hasattr(mlp, n) for n in cls.CHILDREN) or all(hasattr(mlp, n) for n in cls.FUSED_CHILDREN)

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.fused_gate_up = hasattr(base_layer, "gate_up_proj")
        self.children_names = self.FUSED_CHILDREN if self.fused_gate_up else self.CHILDREN
        self.activation_name = "activation_fn" if self.fused_gate_up else "act_fn"
        keep_base(self, base_layer, self.children_names + (self.activation_name,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))`` with the adapters, (B, T, H) -> (B, T, H)."""
        if x.shape[-2] == 1 and not torch.is_grad_enabled():
            # A decode step: the layers' own matrix-vector products (bitsandbytes' 4-bit gemv) read the
            # weights once; the fused training kernel would first unpack a 4-bit weight in full.
            return self.base_layer(x)
        projections = [projection_of(getattr(self, n)) for n in self.children_names]
        activation = GATE_ACTIVATIONS.get(type(getattr(self, self.activation_name)).__name__)
        if activation is None or any(p is None or p.bias is not None for p in projections):
            return self.base_layer(x)
        if not self.fused_gate_up:
            return lora_mlp(x, *projections, activation=activation)
        if activation != "silu":
            return self.base_layer(x)
        gate, up = lora_projections(x, projections[:1])[0].chunk(2, dim=-1)
        return lora_projections(swiglu(gate, up), projections[1:])[0]


class FusedLMHead(nn.Module):
    """The output projection. While ``defer`` is set (a training forward with labels), it keeps the hidden
    states for the fused, chunked cross-entropy and returns a zero-stride placeholder instead of logits."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        keep_base(self, base_layer, ("weight", "bias"))
        self.defer = False
        # Set by ``fused_loss_only``: a forward with labels outside training defers too (an evaluation).
        self.loss_only = False
        self.stash: torch.Tensor | None = None
        # The weight in the autocast dtype, while training on a CPU (fast_path/cpu_autocast.py).
        self.frozen_copy: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        """Vocabulary size (rows of the weight), as ``nn.Linear``."""
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        """Hidden size (columns of the weight), as ``nn.Linear``."""
        return self.weight.shape[1]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Logits, or while deferring a zero-stride placeholder of the same shape."""
        if not self.defer:
            return self.base_layer(hidden_states)
        self.stash = hidden_states
        # Nothing reads these logits: the loss comes from the stash. expand() allocates no memory.
        return hidden_states.new_zeros(()).expand(*hidden_states.shape[:-1], self.out_features)

    def loss(
        self, labels, ignore_index: int = IGNORE_INDEX, num_items_in_batch=None, shift_labels=None
    ) -> torch.Tensor:
        """Causal-LM loss of the stashed hidden states, shifted as transformers' ``ForCausalLMLoss``."""
        hidden, self.stash = self.stash, None
        if shift_labels is None:
            labels = F.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        shift_labels = shift_labels.reshape(-1).to(hidden.device)
        # Only tokens with a label are scored: a prompt masked out of the loss costs no logits.
        counted = shift_labels != ignore_index
        hidden, shift_labels = hidden.reshape(-1, hidden.shape[-1])[counted], shift_labels[counted]
        copy = self.frozen_copy
        weight = copy if copy is not None and torch.is_autocast_enabled(hidden.device.type) else self.weight
        return fused_linear_cross_entropy(
            hidden, weight, shift_labels, self.bias, ignore_index, num_items_in_batch
        )
