"""Packing without padding: several samples in one row, positions restarting per sample.

A packed row carries ``position_ids`` such as ``0 1 2 3 0 1 2 0 1``. The fast path turns restarts into a
block-diagonal causal mask, so each token attends only to earlier tokens of its own sample, and RoPE
sees each sample's own positions. The check runs once per forward and only when the caller passes
``position_ids`` (one host sync); ordinary batches keep SDPA's mask-free causal kernel.
The mask is (B, 1, T, T) booleans: 8 MB at 2 x 2,048 tokens, 1 GB at 32k. A true variable-length
kernel would need no mask at all; SDPA has none, so very long packed rows are better left unpacked.

Where the model's own attention runs (a CPU), ``packed_attention`` instead gives transformers an attention
backend that runs SDPA's causal kernel once per sample: the mask's result without its cost. With a mask,
SDPA's CPU kernel computes all T x T scores; sample by sample it computes the causal half of each sample's
own block (two samples of 480 tokens: a quarter of the work). Under bf16 a sample of up to
``PRODUCTS_MAX_TOKENS`` attends through two batched matrix products instead, which that CPU kernel is slower
than at such lengths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.constants import IGNORE_INDEX
from tunesmith.models.unwrap import base_model_of

__all__ = [
    "pack_without_padding",
    "packed_causal_mask",
    "has_restarts",
    "padding_only_after_rows",
    "sample_lengths",
    "packed_sdpa_forward",
    "causal_attention_by_products",
    "PRODUCTS_MAX_TOKENS",
    "packed_attention",
    "PACKED_SDPA",
    "SDPA_BACKENDS",
]

# The name transformers knows the sample-by-sample backend by, and the backends that compute SDPA's result.
PACKED_SDPA = "tunesmith_packed_sdpa"
SDPA_BACKENDS = ("sdpa", "eager", PACKED_SDPA)

# Up to this many tokens a packed sample on a CPU attends in bf16 through ``causal_attention_by_products``
# instead of SDPA's CPU flash kernel, which runs far under the matrix products' rate on short samples:
# forward and backward of 9 query heads over 3 of width 64 (the embedded model) on 2 cores with AVX-512
# BF16 took 3.2-3.6 ms against 5.3-5.5 at 245 tokens, about the same at 512, and 1.4x longer at 1,024
# (bench/NOTES.md, "The tutorial's own run", item 9). Autograd keeps the probabilities, 2 x heads x T bytes
# per token: at 512 tokens 9 KB for the embedded model, two thirds of what its layer keeps anyway.
PRODUCTS_MAX_TOKENS = 512


def _sample_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, True where a sample starts: the first token, and wherever the position does not continue
    the previous one."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def has_restarts(position_ids: torch.Tensor) -> bool:
    """True when some row's positions do not simply count up (a packed row). One host sync."""
    if position_ids.dim() != 2 or position_ids.shape[1] < 2:
        return False
    return bool(_sample_starts(position_ids)[:, 1:].any())


def padding_only_after_rows(attention_mask: torch.Tensor | None, labels: torch.Tensor | None) -> bool:
    """True when each row's padding comes after its last token (right padding) and no padded position has a
    label. Causal attention without the padding mask then gives every real token the same result (a token
    never sees the positions after it), and the padded positions' outputs reach no loss: so a training
    forward can keep SDPA's mask-free flash kernel instead of a masked one (with grouped heads, its math
    kernel). One host sync."""
    if attention_mask is None or labels is None or attention_mask.dim() != 2:
        return False
    if labels.shape != attention_mask.shape:
        return False
    keep = attention_mask.bool()
    no_token_after_padding = (keep[:, 1:] <= keep[:, :-1]).all()
    padding_unlabelled = labels.masked_fill(keep, IGNORE_INDEX).eq(IGNORE_INDEX).all()
    return bool(no_token_after_padding & padding_unlabelled)


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool, True where query i may attend key j: same sample (a new sample starts where the
    position does not continue the previous one) and j <= i."""
    t = position_ids.shape[1]
    sample = _sample_starts(position_ids).cumsum(dim=1)  # (B, T) sample number of each token
    same = sample[:, :, None] == sample[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    return (same & causal)[:, None]


def pack_without_padding(
    samples: list[list[int]], labels: list[list[int]] | None = None
) -> dict[str, torch.Tensor]:
    """One row holding every sample back to back: ``input_ids``, ``position_ids`` restarting at 0 per
    sample, and ``labels`` (the ids, or the given labels) with each sample's first token ignored so no
    sample learns to predict the start of the next."""
    if not samples or any(len(s) == 0 for s in samples):
        raise ValueError("pack_without_padding needs at least one sample and no empty samples")
    labels = labels if labels is not None else samples
    ids, pos, lab = [], [], []
    for sample, sample_labels in zip(samples, labels, strict=True):
        ids += list(sample)
        pos += list(range(len(sample)))
        lab += [IGNORE_INDEX] + list(sample_labels[1:])
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long)[None]  # noqa: E731
    return {"input_ids": as_row(ids), "position_ids": as_row(pos), "labels": as_row(lab)}


def sample_lengths(position_ids: torch.Tensor | None) -> list[int] | None:
    """The lengths of the samples packed into one row (a new one starts where the position does not
    continue the previous one), or None when ``position_ids`` is not one row of several samples."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    edges = _sample_starts(position_ids)[0].nonzero().flatten().tolist() + [position_ids.shape[1]]
    if len(edges) <= 2:
        return None  # one sample: plain causal attention is all there is
    return [end - start for start, end in pairwise(edges)]


def packed_sdpa_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except that a packed row (one row, several samples, no cache) attends
    sample by sample with the causal kernel. Returns ``(output (B, T, H, D), None)`` as SDPA's does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    same_length = query.shape[2] == key.shape[2]
    lengths = sample_lengths(kwargs.get("position_ids")) if same_length else None
    window = kwargs.get("sliding_window")
    # A local layer (Gemma) whose window is shorter than a sample needs the mask's band, which the causal
    # kernel does not draw.
    beyond_window = lengths is not None and bool(window) and max(lengths) > window
    if lengths is None or sum(lengths) != query.shape[2] or beyond_window:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.shape[1] != key.shape[1]
    by_products = _products_pay(query, lengths, dropout)
    if by_products:  # the dtype SDPA would compute in under autocast
        query, key, value = (x.to(torch.bfloat16) for x in (query, key, value))
    parts = [
        causal_attention_by_products(q, k, v, scaling)
        if by_products and q.shape[2] <= PRODUCTS_MAX_TOKENS
        else F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=grouped
        )
        for q, k, v in zip(
            query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2), strict=True
        )
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _products_pay(query: torch.Tensor, lengths: list[int], dropout: float) -> bool:
    """Whether some sample of a packed row attends through ``causal_attention_by_products``: bf16 on a CPU
    (the query itself, or CPU autocast's dtype), no dropout, a sample no longer than the limit."""
    in_bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    return query.device.type == "cpu" and in_bf16 and not dropout and min(lengths) <= PRODUCTS_MAX_TOKENS


def causal_attention_by_products(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Causal attention of one sample, ``(B, H, T, D)`` queries over ``(B, G, T, D)`` keys and values (G
    divides H; query head ``i`` reads key head ``i // (H // G)``, as SDPA's ``enable_gqa``), computed as two
    batched matrix products around a softmax in the inputs' dtype, autocast off. Returns ``(B, H, T, D)``.
    Autograd keeps the ``H x T x T`` probabilities for backward; see ``PRODUCTS_MAX_TOKENS`` for when."""
    batch, heads, length, dim = query.shape
    groups = key.shape[1]
    scale = dim**-0.5 if scale is None else scale
    future = torch.ones(length, length, dtype=torch.bool, device=query.device).triu(1)
    with torch.autocast(query.device.type, enabled=False):
        # the query heads that share a key head form one matrix of (H / G) x T rows
        rows = query.reshape(batch * groups, heads // groups * length, dim)
        scores = torch.bmm(rows, key.reshape(batch * groups, length, dim).transpose(1, 2))
        scores = scores.view(batch * groups, heads // groups, length, length).masked_fill(future, -torch.inf)
        probs = torch.softmax(scores * scale, dim=-1)
        out = torch.bmm(probs.view(batch * groups, -1, length), value.reshape(batch * groups, length, dim))
    return out.view(batch, heads, length, dim)


@contextmanager
def packed_attention(model: nn.Module) -> Iterator[None]:
    """While inside, a CPU model on transformers' SDPA attends packed rows sample by sample
    (``PACKED_SDPA``); any other model is left as it is. The model gets SDPA back on the way out."""
    core = base_model_of(model)
    config = getattr(core, "config", None)
    parameter = next(core.parameters(), None)
    if (
        getattr(config, "_attn_implementation", None) != "sdpa"
        or parameter is None
        or parameter.device.type != "cpu"
        or not hasattr(core, "set_attn_implementation")
    ):
        yield
        return
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # rows that are not packed keep SDPA's masks
    core.set_attn_implementation(PACKED_SDPA)
    try:
        yield
    finally:
        core.set_attn_implementation("sdpa")
