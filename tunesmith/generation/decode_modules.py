"""The one-token step's attention and MLP in few launches, for the CUDA-graph recording of a decode step.

transformers' attention spends ~40 launches a layer on one new token: RoPE as ten elementwise ops, the key
and value caches copied to every query head (``repeat_kv``, because SDPA's grouped-query path takes no
mask), and PEFT's six launches per adapted projection. Here, for one token per row:
- each projection is the layer's own base kernel; the adapters of projections that read the same input
  (query, key and value; gate and up) are added in one pair of launches (``kernels.lora_decode``);
- RoPE rotates the query and key in place in one launch (``kernels.rope``), after Qwen3's head norms;
- the new key and value go into the model's cache through its own ``update``;
- attention reads the shared key/value heads as they are: the query heads of one key/value head are
  that head's rows, ``(B, Hkv, groups, D)`` against ``(B, Hkv, L, D)`` under the broadcast mask;
- the MLP gates with one SwiGLU kernel.
The math is transformers' (and PEFT's), in float32 where a kernel fuses steps; anything else (more than one
token, no cache, attention weights asked for) goes to the module being wrapped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.fast_path.modules import SILU_CLASSES, FastAttention, projection_of, sdpa_computes
from tunesmith.kernels._triton import on_gpu
from tunesmith.kernels.lora_decode import MAX_GROUP, lora_decode_group_forward, lora_decode_reference
from tunesmith.kernels.rope import rope_forward, rope_reference
from tunesmith.kernels.swiglu import swiglu

__all__ = ["decode_linears", "DecodeAttention", "DecodeMLP", "can_decode_attention", "can_decode_mlp"]


def decode_linears(x: torch.Tensor, *modules: nn.Module) -> list[torch.Tensor]:
    """``[module(x) for module in modules]`` for a few rows ``x`` (N, in): each base layer's own kernel, then
    the LoRA adapters added in place, one pair of decode-kernel launches for all of them (PEFT's own
    forward for a module whose adapter is not one the kernel reads)."""
    ys, adapted = [], []
    for module in modules:
        projection = projection_of(module)
        if projection is None or projection.lora_a is None:
            ys.append(module(x))
            continue
        ys.append(module.get_base_layer()(x))
        adapted.append((len(ys) - 1, (projection.lora_a, projection.lora_b, projection.scaling)))
    for start in range(0, len(adapted), MAX_GROUP):
        _add_adapters(ys, x, adapted[start : start + MAX_GROUP])
    return ys


def _add_adapters(ys: list[torch.Tensor], x: torch.Tensor, adapted: list) -> None:
    """Add each adapter to its output ``ys[i]``: in place by the kernel, else PEFT's arithmetic."""
    adapters = [adapter for _, adapter in adapted]
    tensors = [t for a, b, _ in adapters for t in (a, b)]
    one_rank = len({a.shape for a, _, _ in adapters}) == 1
    if one_rank and all(t.is_contiguous() for t in tensors) and on_gpu(x, *tensors, *ys):
        lora_decode_group_forward([ys[i] for i, _ in adapted], x, adapters)
        return
    for i, (a, b, scaling) in adapted:
        ys[i] = lora_decode_reference(ys[i], x, a, b, scaling)


def _rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE on (B, 1, H, D) query and key: in place on a GPU, the reference elsewhere."""
    if on_gpu(q, k) and q.is_contiguous() and k.is_contiguous():
        rope_forward(q, k, cos, sin)
        return q, k
    return rope_reference(q, k, cos, sin)


def can_decode_attention(attention: nn.Module) -> bool:
    """True for causal attention over the whole cache with plain logits (not Gemma 2's soft-capped logits
    or a layer's own sliding window, which this step's mask does not describe)."""
    core = getattr(attention, "base_layer", attention)
    return sdpa_computes(core) and not getattr(core, "sliding_window", None)


class DecodeAttention(nn.Module):
    """Wraps a Llama-style or Phi-3 attention (transformers' own, or tunesmith's ``FastAttention`` around it)
    for a decode step; registers nothing, so the model's parameters and paths stay as they were."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        core = getattr(attention, "base_layer", attention)  # transformers' module under a FastAttention
        self.__dict__["attention"] = attention
        self.head_dim, self.scaling, self.layer_idx = core.head_dim, core.scaling, core.layer_idx
        self.has_head_norms = all(getattr(attention, n, None) is not None for n in FastAttention.HEAD_NORMS)
        config = core.config
        kv_width = config.num_key_value_heads * self.head_dim  # Phi-3's one qkv_proj splits into three
        fused = hasattr(core, "qkv_proj")
        self.qkv_widths = (config.num_attention_heads * self.head_dim, kv_width, kv_width) if fused else None

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        """Same signature and result as the wrapped attention: ``(output (B, T, H), None)``."""
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        b, t, _ = hidden_states.shape
        if t != 1 or cache is None or position_embeddings is None or kwargs.get("output_attentions"):
            return self.attention(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                **kwargs,
            )
        if position_embeddings[0].shape[-1] != self.head_dim:  # RoPE on part of each head (Phi-4-mini)
            return self.attention(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                **kwargs,
            )
        x, d, attention = hidden_states.view(b, -1), self.head_dim, self.attention
        q, k, v = (y.view(b, 1, -1, d) for y in self._query_key_value(x))
        if self.has_head_norms:
            q, k = attention.q_norm(q), attention.k_norm(k)
        q, k = _rotate(q, k, *position_embeddings)
        keys, values = cache.update(k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)
        kv_heads = keys.shape[1]
        mask = None if attention_mask is None else attention_mask[:, :, :, : keys.shape[-2]]
        out = F.scaled_dot_product_attention(
            q.reshape(b, kv_heads, -1, d), keys, values, attn_mask=mask, scale=self.scaling
        )  # (B, Hkv, groups, D): a key/value head's query heads are its rows
        (o,) = decode_linears(out.reshape(b, -1), attention.o_proj)
        return o.view(b, 1, -1), None

    def _query_key_value(self, x: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v (N, width) for one token per row; q and k tensors of their own (RoPE rotates in place)."""
        attention = self.attention
        if self.qkv_widths is None:
            return decode_linears(x, attention.q_proj, attention.k_proj, attention.v_proj)
        q, k, v = decode_linears(x, attention.qkv_proj)[0].split(self.qkv_widths, dim=-1)
        return [q.contiguous(), k.contiguous(), v]


def can_decode_mlp(mlp: nn.Module) -> bool:
    """True for a SwiGLU MLP: separate gate, up and down projections (Llama, Mistral, Qwen2/3), or one
    fused gate-up projection and a down projection (Phi-3)."""
    if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return type(getattr(mlp, "act_fn", None)).__name__ in SILU_CLASSES
    if all(hasattr(mlp, n) for n in ("gate_up_proj", "down_proj")):
        return type(getattr(mlp, "activation_fn", None)).__name__ in SILU_CLASSES
    return False


class DecodeMLP(nn.Module):
    """Wraps a SwiGLU MLP (``can_decode_mlp``) for a decode step; registers nothing."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.__dict__["mlp"] = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(silu(gate(x)) * up(x))``, (B, T, H) -> (B, T, H)."""
        b, t, _ = x.shape
        if t != 1:
            return self.mlp(x)
        rows = x.view(b, -1)
        if hasattr(self.mlp, "gate_up_proj"):
            g, u = decode_linears(rows, self.mlp.gate_up_proj)[0].chunk(2, dim=-1)
        else:
            g, u = decode_linears(rows, self.mlp.gate_proj, self.mlp.up_proj)
        (down,) = decode_linears(swiglu(g, u), self.mlp.down_proj)
        return down.view(b, 1, -1)
