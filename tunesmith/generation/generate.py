"""``fast_generate(model, input_ids, ...)``: ``model.generate`` on a static KV cache, the one-token step
replayed as a CUDA graph on a GPU.

Same arguments and same result as transformers' ``generate()`` for what tutorials and tunesmith use:
greedy or sampled decoding (temperature, top-k, top-p, min-p), ``max_new_tokens`` / ``min_new_tokens``,
every end token of the generation config, left-padded batches, a streamer. Anything else (beam search,
repetition penalties, custom processors, sliding-window models) goes to transformers' own ``generate()``,
and ``last_generation(model)`` says which path ran and why.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.generation.sampling import TokenChooser
from tunesmith.generation.settings import DecodeSettings, read_settings
from tunesmith.generation.static_decoder import StaticDecoder, static_decoding_refusal
from tunesmith.models.quantization import keep_4bit_weights_unpacked
from tunesmith.models.unwrap import base_model_of

__all__ = [
    "fast_generate",
    "library_generate",
    "last_generation",
    "forget_decoder",
    "enable_fast_generation",
    "disable_fast_generation",
    "GenerationRecord",
]

_DECODER = "_tunesmith_decoder"  # the instance's reusable StaticDecoder (one: a new shape replaces it)
_RECORD = "_tunesmith_last_generation"
_CACHE_STEP = {"cuda": 256, "cpu": 64}  # cache lengths round up to this, so nearby calls reuse one graph
_CHECK_EVERY = 8  # steps between the host's looks at "has every row ended" (each look waits for the GPU)


@dataclass
class GenerationRecord:
    """What the last ``generate()`` call on a model did."""

    path: str  # "cuda-graph", "eager" (static cache, no graph) or "transformers"
    why: str = ""  # why transformers' generate() ran, or why no graph was recorded
    new_tokens: int = 0
    seconds: float = 0.0


def library_generate(model: nn.Module, *args, **kwargs):
    """transformers' (or PEFT's) own ``generate`` of this model's class, whatever the instance has bound."""
    return type(model).generate(model, *args, **kwargs)


def last_generation(model: nn.Module) -> GenerationRecord | None:
    """How the last ``generate()`` on ``model`` ran (None before the first)."""
    return model.__dict__.get(_RECORD)


def _device_of(model: nn.Module) -> torch.device:
    head = base_model_of(model).get_output_embeddings()
    return head.weight.device if head is not None else next(model.parameters()).device


def _attention_mask(input_ids: torch.Tensor, attention_mask, settings: DecodeSettings) -> torch.Tensor:
    """The caller's mask, else transformers' rule: padding tokens are hidden when pad is not also EOS."""
    if attention_mask is not None:
        return attention_mask
    pad = settings.pad_id
    if pad not in settings.eos_ids and bool((input_ids == pad).any()):
        return (input_ids != pad).long()
    return torch.ones_like(input_ids)


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when weights are replaced or adapters added, so a recorded graph is never stale."""
    return tuple(p.data_ptr() for p in model.parameters())


def _decoder_for(model: nn.Module, batch: int, needed: int, device: torch.device) -> StaticDecoder:
    """The model's held decoder when it fits (on a GPU a longer cache is reused: its graph is recorded
    already), else a new one (the old cache freed first)."""
    fingerprint = _fingerprint(model)
    held = model.__dict__.get(_DECODER)
    if held is not None:
        key, decoder = held
        fits = key == (batch, fingerprint) and needed <= decoder.cache_len
        if fits and (device.type == "cuda" or decoder.cache_len - needed < _CACHE_STEP["cpu"]):
            return decoder
    model.__dict__.pop(_DECODER, None)
    step = _CACHE_STEP.get(device.type, 64)
    decoder = StaticDecoder(model, batch, -(-needed // step) * step, device)
    model.__dict__[_DECODER] = ((batch, fingerprint), decoder)
    return decoder


def _copy_to_host(tokens: torch.Tensor):
    """Start copying ``tokens`` to the host; returns a function that waits for that copy alone."""
    if tokens.device.type != "cuda":
        return lambda: tokens.clone()
    host = tokens.to("cpu", non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def wait() -> torch.Tensor:
        copied.synchronize()
        return host

    return wait


def _until_all_ended(new: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
    """The new tokens (B, N) up to the step where the last row ended, as transformers stops; the loop looks
    only every few steps, so it may have run a few more."""
    if not eos.numel():
        return new
    ended = torch.isin(new, eos).cumsum(dim=1).gt(0).all(dim=0)  # (N,): every row has ended by this step
    return new[:, : int(ended.int().argmax()) + 1] if bool(ended.any()) else new


def forget_decoder(model: nn.Module) -> None:
    """Free the model's static cache and CUDA graph (``for_training`` calls it)."""
    model.__dict__.pop(_DECODER, None)


def fast_generate(model: nn.Module, inputs: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """``model.generate(...)`` through the static-cache loop; returns prompt + new tokens (B, P + N), rows
    that ended early padded with the pad token, exactly as transformers' ``generate()`` does."""
    input_ids = kwargs.pop("input_ids", inputs)
    attention_mask = kwargs.pop("attention_mask", None)
    streamer = kwargs.pop("streamer", None)
    why = static_decoding_refusal(model)
    settings = None
    if not why:
        if input_ids is None or "inputs_embeds" in kwargs:
            why = "no input_ids (inputs_embeds or encoder inputs)"
        elif streamer is not None and input_ids.shape[0] != 1:
            why = "a streamer with more than one row"
        else:
            settings, why = read_settings(model, input_ids.shape[1], kwargs)
    was_training = model.training
    keep_4bit_weights_unpacked(model)  # an eval pass must not repack 4-bit weights (see quantization.py)
    if was_training:  # a walk over every module, before the first token: only when it changes anything
        model.eval()
    try:
        if settings is not None:
            return _decode(model, input_ids, attention_mask, streamer, settings)
        model.__dict__[_RECORD] = GenerationRecord(path="transformers", why=why)
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer)
        return library_generate(model, **{k: v for k, v in kwargs.items() if v is not None})
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def _decode(model, input_ids, attention_mask, streamer, settings: DecodeSettings) -> torch.Tensor:
    started = time.perf_counter()
    device = _device_of(model)
    input_ids = input_ids.to(device)
    mask = _attention_mask(input_ids, attention_mask, settings).to(device)
    batch, length = input_ids.shape
    if settings.max_new_tokens == 0:
        return input_ids
    decoder = _decoder_for(model, batch, length + settings.max_new_tokens, device)
    choose = TokenChooser(settings, device)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    produced: list[torch.Tensor] = []
    logits = decoder.prefill(input_ids, mask)
    seen = _seen_tokens(input_ids, mask, settings)
    for index in range(settings.max_new_tokens):
        chosen = choose(logits, index, None if seen is None else seen[:, : length + index])
        tokens = torch.where(finished, settings.pad_id, chosen)
        produced.append(tokens)
        if seen is not None:
            seen[:, length + index] = tokens
        if choose.eos.numel():
            finished |= torch.isin(tokens, choose.eos)
        last = index + 1 == settings.max_new_tokens
        shown = _copy_to_host(tokens) if streamer is not None else None
        if not last:  # queued before the host looks at this token, so the GPU never waits
            logits = decoder.step(tokens)
        if shown is not None:
            streamer.put(shown())
        if last or ((streamer is not None or index % _CHECK_EVERY == 0) and bool(finished.all())):
            break
    if streamer is not None:
        streamer.end()
    new = _until_all_ended(torch.stack(produced, dim=1), choose.eos)
    model.__dict__[_RECORD] = GenerationRecord(
        path=decoder.mode,
        why=decoder.graph_failed or "",
        new_tokens=new.shape[1],
        seconds=time.perf_counter() - started,
    )
    return torch.cat([input_ids, new], dim=1)


def _seen_tokens(
    input_ids: torch.Tensor, mask: torch.Tensor, settings: DecodeSettings
) -> torch.Tensor | None:
    """The prompt with room for every new token, which a repetition penalty reads; None without one. Left
    padding repeats the row's first real token (penalised once all the same), so a prompt answered in a
    batch gets the answer it gets alone."""
    if settings.repetition_penalty == 1.0:
        return None
    first_real = input_ids.gather(1, mask.long().argmax(1, keepdim=True))
    seen = input_ids.new_full(
        (input_ids.shape[0], input_ids.shape[1] + settings.max_new_tokens), settings.pad_id
    )
    seen[:, : input_ids.shape[1]] = torch.where(mask.bool(), input_ids, first_real)
    return seen


def enable_fast_generation(model: nn.Module) -> nn.Module:
    """Make ``model.generate`` this instance's :func:`fast_generate` (bound with ``types.MethodType``, like
    the export methods; no library class changes). Returns ``model``."""
    object.__setattr__(model, "generate", types.MethodType(fast_generate, model))
    return model


def disable_fast_generation(model: nn.Module) -> nn.Module:
    """Give ``model.generate`` back to its class and free the static cache. Returns ``model``."""
    model.__dict__.pop("generate", None)
    forget_decoder(model)
    return model
