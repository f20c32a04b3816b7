"""One batch's decoding state on a preallocated KV cache, and the one-token step it repeats.

transformers' ``StaticCache`` holds the keys and values at fixed addresses and counts its own length on the
device, so the one-token step reads and writes only tensors that never move: on a GPU it is recorded once as
a CUDA graph and replayed for every new token (one launch instead of a few thousand). The attention mask is
built here, as the 4-D additive mask transformers passes through unchanged: key slot ``j`` of row ``b`` is
visible once it holds a real token (left padding stays hidden), and every slot at or before the query's own.
The model is called as it is (PEFT wrapper, LoRA unmerged, 4-bit layers); while the step is recorded,
``decode_kernels`` puts tunesmith's fused RMSNorm in, and the model gets its own modules back before the
first replay, so training can go on afterwards with nothing to undo.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn

from tunesmith.fast_path.packing import SDPA_BACKENDS
from tunesmith.generation.decode_kernels import decode_kernels
from tunesmith.models.expert_stacks import stack_tensor_names
from tunesmith.models.unwrap import base_model_of

__all__ = ["StaticDecoder", "static_decoding_refusal"]

logger = logging.getLogger(__name__)

_WARMUP_STEPS = 2  # Triton autotuning and cuBLAS workspaces settle before the graph is recorded
_REFUSAL = "_tunesmith_static_refusal"  # ((model class, attention backend), the answer) on the instance


def _forward_parameters(model: nn.Module) -> set[str]:
    return set(inspect.signature(base_model_of(model).forward).parameters)


def static_decoding_refusal(model: nn.Module) -> str | None:
    """Why this model cannot decode on a static cache here (None when it can). Asked before every
    ``generate()``, so the answer is kept on the model for its class and attention backend."""
    core = base_model_of(model)
    key = (type(core), getattr(core.config, "_attn_implementation", None))
    kept = model.__dict__.get(_REFUSAL)
    if kept is None or kept[0] != key:
        kept = model.__dict__[_REFUSAL] = (key, _refusal(core))
    return kept[1]


def _refusal(core: nn.Module) -> str | None:
    if stack_tensor_names(core):
        # A CUDA graph replays kernels only: the hooks that swap each stack's memory would not run.
        return "its 4-bit expert stacks are dequantized by forward hooks, one layer at a time"
    parameters = _forward_parameters(core)
    if "cache_position" in parameters:
        return "this transformers version positions its cache through cache_position (5.17 and later do not)"
    if "cache" not in parameters and "past_key_values" not in parameters:
        return f"{type(core).__name__}.forward takes no cache"
    if getattr(core.config, "_attn_implementation", "sdpa") not in SDPA_BACKENDS:
        return f"the {core.config._attn_implementation} attention backend takes no 4-D mask"
    from transformers import StaticCache

    # The cache transformers builds for this config says which layers keep a rolling window (no tensors yet).
    try:
        layers = StaticCache(config=core.config, max_cache_len=1).layers
    except Exception as err:  # a config transformers builds no static cache for
        return f"transformers builds no static cache for it ({type(err).__name__})"
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        return "sliding-window layers keep a rolling cache that this mask does not describe"
    return None


class StaticDecoder:
    """The KV cache, masks and positions of ``batch_size`` rows of at most ``cache_len`` tokens.

    ``prefill(ids, mask)`` reads a left-padded prompt batch and returns the last position's logits (B, V);
    ``step(next_ids)`` feeds one token per row and returns the next logits. Reusable: ``prefill`` resets.
    """

    def __init__(self, model: nn.Module, batch_size: int, cache_len: int, device: torch.device):
        from transformers import StaticCache

        self.model = model
        self.batch_size, self.cache_len, self.device = batch_size, cache_len, device
        core = base_model_of(model)
        self.cache = StaticCache(config=core.config, max_cache_len=cache_len)
        self._cache_kwarg = "cache" if "cache" in _forward_parameters(model) else "past_key_values"
        self.mask_dtype = core.get_input_embeddings().weight.dtype
        if not self.mask_dtype.is_floating_point:
            self.mask_dtype = torch.float32
        self._hidden = torch.finfo(self.mask_dtype).min
        self.visible = torch.zeros(batch_size, cache_len, dtype=torch.bool, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # where the next token's key goes
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # its RoPE position
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.graph_failed: str | None = None
        self.use_graph = device.type == "cuda"

    # -- the model call ------------------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: self.cache},
        )
        return out.logits[:, -1]

    def _one_token(self) -> torch.Tensor:
        """The step the graph records: reveal the new slot, run the model on one token per row, advance."""
        self.visible.index_fill_(1, self.slot, True)
        mask = torch.zeros(
            self.batch_size, 1, 1, self.cache_len, dtype=self.mask_dtype, device=self.device
        ).masked_fill_(~self.visible[:, None, None, :], self._hidden)
        logits = self._forward(self.ids, self.positions, mask)
        self.positions.add_(1)
        self.slot.add_(1)
        return logits

    # -- public --------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every row: cache, masks and counters back to empty, at the same addresses."""
        self.cache.reset()
        self.visible.zero_()
        self.slot.zero_()
        self.positions.zero_()

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Read the (left-padded) prompts into the cache; the logits after each row's last token (B, V)."""
        if self.use_graph and self.graph is None and self.graph_failed is None:
            self._record(input_ids[:, -1:])
        self.reset()
        length = input_ids.shape[1]
        real = attention_mask.to(self.device, torch.bool)
        self.visible[:, :length] = real
        positions = (real.long().cumsum(-1) - 1).clamp_(min=0)
        query = torch.arange(length, device=self.device)[:, None]
        key = torch.arange(self.cache_len, device=self.device)[None, :]
        seen = (key <= query)[None] & self.visible[:, None, :]
        seen |= (key == query)[None]  # a padding query sees itself, so its softmax has something to weigh
        mask = torch.zeros(seen.shape, dtype=self.mask_dtype, device=self.device)
        mask = mask.masked_fill_(~seen, self._hidden)[:, None]
        logits = self._forward(input_ids.to(self.device), positions, mask)
        self.positions.copy_(positions[:, -1:] + 1)
        self.slot.fill_(length)
        return logits

    def step(self, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,); the logits for the token after it (B, V)."""
        self.ids.copy_(next_ids.view(-1, 1))
        if self.graph is not None:
            self.graph.replay()
            return self.graph_logits
        return self._one_token()

    @property
    def mode(self) -> str:
        """How the one-token step runs: ``"cuda-graph"`` or ``"eager"``."""
        return "cuda-graph" if self.graph is not None else "eager"

    # -- the CUDA graph ------------------------------------------------------------------------------------
    def _record(self, sample_ids: torch.Tensor) -> None:
        """Record the step with the decode modules; if that fails, with the model's own attention and MLP
        (norms still fused); if that fails too, stay eager. Each failure is said once, with its reason."""
        for layers in (True, False):
            failed = self._try_record(sample_ids, layers)
            if failed is None:
                return
            logger.warning(
                "tunesmith: %s (%s).",
                "the decode modules could not be recorded; recording the model's own layers"
                if layers
                else "generation runs without a CUDA graph",
                failed,
            )
        self.graph_failed = failed

    def _try_record(self, sample_ids: torch.Tensor, layers: bool) -> str | None:
        """Run the step a few times on a side stream, then record it; the reason when that failed."""
        self.ids.copy_(sample_ids)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            # The graph keeps these kernels; the model gets its own modules back at the end of the block.
            with decode_kernels(self.model, layers=layers):
                with torch.cuda.stream(stream):
                    for _ in range(_WARMUP_STEPS):
                        self._one_token()
                torch.cuda.current_stream(self.device).wait_stream(stream)
                self.reset()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self.graph_logits = self._one_token()
            self.graph = graph
            return None
        except Exception as err:  # a layer that syncs with the host or allocates outside the graph
            torch.cuda.synchronize(self.device)
            self.graph, self.graph_logits = None, None
            self.reset()
            return f"{type(err).__name__}: {err}".splitlines()[0][:300]
