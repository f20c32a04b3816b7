"""Turn the fast GPU path on and off for a loaded transformers model: ``apply_fast_path`` / ``unpatch``.

The fast path swaps modules of the model instance (``setattr`` on their parents), never the library:
RMSNorms, each decoder layer's attention and MLP, and the output projection, whose loss becomes the
fused chunked cross-entropy through transformers' own ``loss_function`` setter. It also installs smart
checkpointing and packing without padding (restarting ``position_ids`` -> per-sample attention). The
registry's families with ``fast_path`` (Llama, Mistral, Qwen2, Qwen3, Gemma 2/3, Phi-3) get it; other
architectures keep the plain path with a one-line notice. Apply it after ``get_peft_model`` (the wrappers
read the LoRA layers at every step, so adapters added later are used too, but the model you call must be the
one patched).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path.checkpointing import SmartCheckpointing, plain_layer_bytes_per_token
from tunesmith.fast_path.experts import FastMoEBlock
from tunesmith.fast_path.modules import FastAttention, FastMLP, FastRMSNorm, FusedLMHead
from tunesmith.fast_path.offload import HostEmbedding
from tunesmith.fast_path.packing import has_restarts, packed_causal_mask, padding_only_after_rows
from tunesmith.models.registry import family_of
from tunesmith.models.unwrap import base_model_of

__all__ = [
    "apply_fast_path",
    "apply_cpu_path",
    "has_fused_loss",
    "fused_loss_only",
    "unpatch",
    "FastPathState",
]

logger = logging.getLogger(__name__)

_STATE = "_tunesmith_fast_path"


@dataclass
class FastPathState:
    """What ``apply_fast_path`` changed, so ``unpatch`` can undo exactly that."""

    swaps: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)  # (parent, name, original)
    hooks: list = field(default_factory=list)
    causal_lm: nn.Module | None = None
    had_loss_function: bool = False
    old_loss_function: object = None
    checkpointing: SmartCheckpointing | None = None


# A decoder layer's norms: Llama's two, and Gemma 2/3's two more around the MLP.
LAYER_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


def _swap(state: FastPathState, parent: nn.Module, name: str, wrapper) -> None:
    original = getattr(parent, name)
    setattr(parent, name, wrapper(original))
    state.swaps.append((parent, name, original))


def _swap_layers(state: FastPathState, decoder: nn.Module, norm_weight_offset: float) -> None:
    def norm(module: nn.Module) -> FastRMSNorm:
        return FastRMSNorm(module, norm_weight_offset)

    for layer in decoder.layers:
        for name in LAYER_NORMS:
            if getattr(layer, name, None) is not None:
                _swap(state, layer, name, norm)
        _swap(state, layer, "self_attn", FastAttention)
        if layer.self_attn.has_head_norms:
            for name in FastAttention.HEAD_NORMS:
                _swap(state, layer.self_attn, name, norm)
        if FastMLP.can_wrap(layer.mlp):
            _swap(state, layer, "mlp", FastMLP)
        elif FastMoEBlock.can_wrap(layer.mlp):
            _swap(state, layer, "mlp", FastMoEBlock)
    _swap(state, decoder, "norm", norm)


def _install_fused_loss(state: FastPathState, causal_lm: nn.Module) -> None:
    """Swap the output projection and route the causal-LM loss through the fused cross-entropy."""
    head = getattr(causal_lm, "lm_head", None)
    if type(head) is not nn.Linear:  # an adapted or quantized head keeps the plain loss
        return
    if getattr(causal_lm.config, "final_logit_softcapping", None):  # Gemma 2 caps its logits first
        return
    _swap(state, causal_lm, "lm_head", FusedLMHead)
    fused: FusedLMHead = causal_lm.lm_head
    state.had_loss_function = "_loss_function" in causal_lm.__dict__
    state.old_loss_function = causal_lm.loss_function

    def defer_when_training(module, args, kwargs):
        scoring = (module.training and torch.is_grad_enabled()) or fused.loss_only
        fused.defer = kwargs.get("labels") is not None and scoring

    def stop_deferring(module, args, kwargs, output):
        fused.defer, fused.stash = False, None

    def loss_function(
        logits,
        labels,
        vocab_size=None,
        num_items_in_batch=None,
        ignore_index=IGNORE_INDEX,
        shift_labels=None,
        **kwargs,
    ):
        if fused.stash is None:
            return state.old_loss_function(
                logits,
                labels,
                vocab_size,
                num_items_in_batch=num_items_in_batch,
                ignore_index=ignore_index,
                shift_labels=shift_labels,
                **kwargs,
            )
        return fused.loss(labels, ignore_index, num_items_in_batch, shift_labels)

    state.hooks.append(causal_lm.register_forward_pre_hook(defer_when_training, with_kwargs=True))
    state.hooks.append(causal_lm.register_forward_hook(stop_deferring, with_kwargs=True))
    causal_lm.loss_function = loss_function  # transformers' own setter for a custom loss


def _embedding_to_host(state: FastPathState, causal_lm: nn.Module, decoder: nn.Module) -> None:
    """Keep a frozen, untied input embedding in CPU memory (the lean setting: a cap and offload)."""
    embed = getattr(decoder, "embed_tokens", None)
    head = getattr(causal_lm, "lm_head", None)
    if type(embed) is not nn.Embedding or not embed.weight.is_cuda or embed.weight.requires_grad:
        return
    if head is not None and getattr(head, "weight", None) is embed.weight:
        return  # tied to the output projection, which the GPU needs anyway
    _swap(state, decoder, "embed_tokens", HostEmbedding)


def _install_packing(state: FastPathState, causal_lm: nn.Module) -> None:
    """Give every fast attention the block-diagonal mask when the caller passes restarting position_ids."""
    attentions = [m for m in causal_lm.modules() if isinstance(m, FastAttention)]

    def set_mask(module, args, kwargs):
        position_ids = kwargs.get("position_ids")
        mask = (
            packed_causal_mask(position_ids)
            if position_ids is not None and has_restarts(position_ids)
            else None
        )
        training = module.training and torch.is_grad_enabled()
        after_rows = (
            mask is None
            and training
            and padding_only_after_rows(kwargs.get("attention_mask"), kwargs.get("labels"))
        )
        for attention in attentions:
            attention.packed_mask = mask
            attention.padding_after_rows = after_rows

    def clear_mask(module, args, kwargs, output):
        for attention in attentions:
            attention.packed_mask = None
            attention.padding_after_rows = False

    state.hooks.append(causal_lm.register_forward_pre_hook(set_mask, with_kwargs=True))
    state.hooks.append(causal_lm.register_forward_hook(clear_mask, with_kwargs=True))


def apply_fast_path(model: nn.Module, *, max_memory_gb: float | None = None, offload: bool = False) -> bool:
    """Swap in tunesmith's fused modules; returns True when the fast path is on.

    ``max_memory_gb`` caps the memory smart checkpointing plans for (default: most of the GPU);
    ``offload`` lets checkpointed activations go to pinned CPU memory when even full checkpointing
    does not fit; with a cap as well, the frozen input embedding stays in CPU memory. Calling it twice is a
    no-op. ``unpatch(model)`` restores the original modules.
    """
    if getattr(model, _STATE, None) is not None:
        return True
    causal_lm = base_model_of(model)
    config = getattr(causal_lm, "config", None)
    model_type = getattr(config, "model_type", "")
    family = family_of(model_type)
    decoder = getattr(causal_lm, "model", None)
    if family is None or not family.fast_path or not hasattr(decoder, "layers"):
        logger.warning(
            "tunesmith: no fast path for model type %r yet; training on the plain transformers path.",
            model_type,
        )
        return False
    state = FastPathState(causal_lm=causal_lm)
    _swap_layers(state, decoder, family.norm_weight_offset)
    _install_fused_loss(state, causal_lm)
    _install_packing(state, causal_lm)
    if offload and max_memory_gb is not None:
        _embedding_to_host(state, causal_lm, decoder)
    state.checkpointing = SmartCheckpointing(
        decoder, decoder.layers, config, max_memory_gb, offload, plain_loss_vocab=_plain_loss_vocab(causal_lm)
    )
    model.__dict__[_STATE] = state
    return True


def apply_cpu_path(
    model: nn.Module, *, max_memory_gb: float | None = None, smart_checkpointing: bool = True
) -> None:
    """The fast path's share that pays on a CPU, where the model keeps its own layers: the fused chunked
    cross-entropy for training forwards with labels (no full logits, no second pass over the output weight)
    and, with ``smart_checkpointing``, recomputing only the layers whose activations would not fit a share
    of the host's memory. ``unpatch(model)`` takes both off again."""
    if getattr(model, _STATE, None) is not None:
        return
    causal_lm = base_model_of(model)
    state = FastPathState(causal_lm=causal_lm)
    _install_fused_loss(state, causal_lm)
    decoder = getattr(causal_lm, "model", None)
    if smart_checkpointing and hasattr(decoder, "layers"):
        state.checkpointing = SmartCheckpointing(
            decoder,
            decoder.layers,
            causal_lm.config,
            max_memory_gb,
            offload=False,
            bytes_per_token=plain_layer_bytes_per_token,
            on_cpu=True,
            plain_loss_vocab=_plain_loss_vocab(causal_lm),
        )
    model.__dict__[_STATE] = state


def _plain_loss_vocab(causal_lm: nn.Module) -> int | None:
    """The vocabulary whose full logits the plain loss holds in training, or None where the fused head
    computes the loss chunk by chunk."""
    if has_fused_loss(causal_lm):
        return None
    head = getattr(causal_lm, "lm_head", None)
    return getattr(head, "out_features", None) or causal_lm.config.get_text_config().vocab_size


def has_fused_loss(model: nn.Module) -> bool:
    """Whether a training forward of ``model`` with labels computes its loss through the fused head."""
    return _fused_head(model) is not None


def _fused_head(model: nn.Module) -> FusedLMHead | None:
    head = getattr(base_model_of(model), "lm_head", None)
    return head if isinstance(head, FusedLMHead) else None


@contextmanager
def fused_loss_only(model: nn.Module) -> Iterator[None]:
    """While inside, every forward of ``model`` with labels, in training or not, scores its loss through the
    fused head (chunked, no vocabulary-wide logits; the logits it returns are a placeholder). For an
    evaluation that asks for the loss alone. A model without the fused head is left as it is."""
    head = _fused_head(model)
    if head is None:
        yield
        return
    head.loss_only = True
    try:
        yield
    finally:
        head.loss_only = False


def unpatch(model: nn.Module) -> None:
    """Put back every original module, hook, loss function and checkpointing switch. No-op when unpatched."""
    state: FastPathState | None = model.__dict__.pop(_STATE, None)
    if state is None:
        return
    if state.checkpointing is not None:
        state.checkpointing.remove()
    for handle in state.hooks:
        handle.remove()
    if state.causal_lm is not None and "lm_head" in {name for _, name, _ in state.swaps}:
        if state.had_loss_function:
            state.causal_lm.loss_function = state.old_loss_function
        else:
            state.causal_lm.__dict__.pop("_loss_function", None)
    for parent, name, original in reversed(state.swaps):
        wrapper = getattr(parent, name)
        for child_name, child in wrapper.named_children():  # adapters added while patched stay
            setattr(original, child_name, child)
        if isinstance(wrapper, HostEmbedding):
            wrapper.restore()
        setattr(parent, name, original)
