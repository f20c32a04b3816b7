"""Transformers tensors -> GGUF tensors: names (through ``gguf.TensorNameMap``) and layout changes.

Three layout changes. A mixture-of-experts layer's experts, written one per tensor as transformers saves
them (``mlp.experts.{e}.gate_proj.weight``), go into llama.cpp as one 3-D tensor per projection
(``ffn_gate_exps``: experts x rows x columns, in expert order). Gemma's RMSNorm weights are stored as
``1 + weight`` (``ArchInfo.norm_weight_offset``: Gemma multiplies by ``1 + w``, llama.cpp by the stored
tensor). And llama.cpp's ``llama`` architecture applies rotary embeddings to adjacent pairs of dimensions,
Hugging Face's Llama to the two halves of each head. Rows of ``q_proj``/``k_proj`` are reordered per head
from ``[x0..x(d/2-1), y0..y(d/2-1)]`` to ``[x0, y0, x1, y1, ...]`` so both compute
the same thing. Qwen2/Qwen3 use llama.cpp's NEOX rope (halves), so they are left as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import gguf
import torch

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_constants import ArchInfo
from tunesmith.export.tensor_source import TensorSource
from tunesmith.models.registry import head_dim_of

__all__ = [
    "GGUFTensor",
    "gguf_tensors",
    "stack_experts",
    "permute_for_rope",
    "llama3_rope_factors",
    "rope_parameters",
    "rope_theta",
]


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor as it goes into the GGUF file (data computed on demand, float32)."""

    name: str
    shape: tuple[int, ...]  # PyTorch order (rows, cols)
    load: Callable[[], torch.Tensor]


def permute_for_rope(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder q/k rows per head from halves to interleaved pairs (see the module docstring)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """Per-frequency divisors of Llama 3.1-style rope scaling (llama.cpp reads them as ``rope_freqs``)."""
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32)


def _transform(
    source: TensorSource, arch: ArchInfo, n_head: int, n_head_kv: int
) -> Callable[[], torch.Tensor]:
    if arch.norm_weight_offset and source.name.endswith("norm.weight"):
        return lambda: source.load().float() + arch.norm_weight_offset
    if arch.permute_qk and source.name.endswith(("q_proj.weight", "q_proj.bias")):
        return lambda: permute_for_rope(source.load().float(), n_head)
    if arch.permute_qk and source.name.endswith(("k_proj.weight", "k_proj.bias")):
        return lambda: permute_for_rope(source.load().float(), n_head_kv)
    return lambda: source.load().float()


_EXPERT_WEIGHT = re.compile(
    r"^(?P<experts>.+\.experts)\.(?P<e>\d+)\.(?P<kind>gate_proj|up_proj|down_proj)\.weight$"
)


def stack_experts(sources: list[TensorSource]) -> list[TensorSource]:
    """``sources`` with each layer's per-expert weights of one projection stacked into one 3-D tensor
    (``...mlp.experts.gate_proj.weight``: experts x rows x columns, as ``gguf``'s name map knows it), at the
    place of its first expert; other tensors unchanged."""
    groups: dict[str, list[TensorSource]] = {}
    order: list[TensorSource | str] = []
    for source in sources:
        match = _EXPERT_WEIGHT.match(source.name)
        if match is None:
            order.append(source)
            continue
        key = f"{match['experts']}.{match['kind']}.weight"
        if key not in groups:
            groups[key] = []
            order.append(key)
        if int(match["e"]) != len(groups[key]):
            raise TunesmithError(
                f"The experts of '{match['experts']}' are not numbered 0, 1, 2, ... in order."
            )
        groups[key].append(source)

    def stacked(key: str) -> TensorSource:
        parts = groups[key]
        shape = (len(parts), *parts[0].shape)
        return TensorSource(
            key, shape, parts[0].dtype, lambda: torch.stack([p.load().float() for p in parts])
        )

    return [item if isinstance(item, TensorSource) else stacked(item) for item in order]


def gguf_tensors(sources: list[TensorSource], arch: ArchInfo, config) -> list[GGUFTensor]:
    """GGUF names and loaders for every model tensor (plus ``rope_freqs`` for Llama 3.1-style scaling)."""
    n_layers = config.num_hidden_layers
    n_head = config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(arch.arch, n_layers)
    out = []
    for source in stack_experts(sources):
        name = names.get_name(source.name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TunesmithError(
                f"GGUF export does not know where the tensor '{source.name}' goes in a llama.cpp "
                f"'{arch.name}' model. Is this model a modified {arch.model_type}? Please report it."
            )
        out.append(GGUFTensor(name, source.shape, _transform(source, arch, n_head, n_head_kv)))
    rope = rope_parameters(config)
    if rope.get("rope_type") == "llama3":
        factors = llama3_rope_factors(head_dim_of(config), rope_theta(config), rope)
        rope_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        out.append(GGUFTensor(rope_name, tuple(factors.shape), lambda: factors))
    return out


def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """Rope settings as one dict (transformers 5 ``rope_parameters`` or older ``rope_scaling``); for models
    whose layer types rotate differently (Gemma 3: local and global layers), those of ``layer_type``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    params.update({k: v for k, v in (getattr(config, "rope_scaling", None) or {}).items() if k not in params})
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params["type"]
    return params


def rope_theta(config) -> float:
    """The rope base frequency."""
    return float(rope_parameters(config).get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
