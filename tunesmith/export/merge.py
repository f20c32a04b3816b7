"""Merge LoRA adapters into the base weights one tensor at a time, and save merged or adapter-only folders.

For each adapted linear layer the merged weight is ``W' = dequant(W) + sum_a scale_a * B_a @ A_a`` (PEFT's
``get_delta_weight``), computed only when that tensor is written; the model in memory is never changed
and never copied, so peak extra memory is about one weight matrix. The GGUF writer reads the same stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from tunesmith._atomic import atomic_dir
from tunesmith.errors import TunesmithError
from tunesmith.export._output import check_free_space, check_output_dir, disk_full_as_error
from tunesmith.export._safetensors import parse_size, shard_plan, write_shards
from tunesmith.export.tensor_source import TensorSource
from tunesmith.models.expert_stacks import dense_stack
from tunesmith.models.registry import FUSED_EXPERT_PARAMETERS
from tunesmith.models.unwrap import base_model_of, without_param_wrappers

__all__ = ["merged_tensors", "save_pretrained_merged", "SAVE_METHODS"]

SAVE_METHODS = ("merged_16bit", "lora")


def _dense(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a floating-point tensor: the parameter itself, or a dequantized copy of bitsandbytes
    4-/8-bit storage."""
    kind = type(weight).__name__
    if kind == "Params4bit":
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(weight.data, weight.quant_state)
    if kind == "Int8Params" and getattr(weight, "SCB", None) is not None:
        return weight.data.float() * (weight.SCB.float().unsqueeze(1) / 127.0)
    return weight.detach()


def _shape_dtype(weight: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype]:
    """The logical shape and dtype of a (possibly 4-bit packed) weight, without dequantizing it."""
    state = getattr(weight, "quant_state", None)
    if type(weight).__name__ == "Params4bit" and state is not None:
        return tuple(state.shape), state.dtype
    if type(weight).__name__ == "Int8Params":
        return tuple(weight.shape), torch.float16
    return tuple(weight.shape), weight.dtype


def _merged_weight(layer: torch.nn.Module) -> torch.Tensor:
    """``dequant(W) + delta`` of every active, not-yet-merged LoRA adapter of one PEFT layer."""
    weight = _dense(layer.get_base_layer().weight)
    return _with_deltas(weight, layer).to(weight.dtype)


def _with_deltas(weight: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """``weight`` (float32, out of place) plus the delta of every active, not-yet-merged LoRA adapter of
    one PEFT layer (a linear layer's, or a ``ParamWrapper``'s parameter)."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return weight  # already folded into W (or switched off): adding again would double it
    out = weight.float()  # may be ``weight`` itself: only out-of-place sums below
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        if layer.use_dora.get(adapter, False):
            raise TunesmithError(
                f"The adapter '{adapter}' uses DoRA, which tunesmith cannot merge yet. Save the adapter "
                "alone with save_method='lora', or train without use_dora."
            )
        out = out + layer.get_delta_weight(adapter).float()
    return out


def _lora_sources(name: str, layer: torch.nn.Module) -> Iterator[TensorSource]:
    base = layer.get_base_layer()
    shape, dtype = _shape_dtype(base.weight)
    yield TensorSource(f"{name}.weight", shape, dtype, lambda: _merged_weight(layer))
    if getattr(base, "bias", None) is not None:
        yield TensorSource(f"{name}.bias", tuple(base.bias.shape), base.bias.dtype, base.bias.detach)


def _experts_of(module: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, list]] | None:
    """A mixture-of-experts layer's experts (fused 3-D ``gate_up_proj`` / ``down_proj``, transformers 5)
    under any PEFT ``ParamWrapper`` s, and the wrappers by the parameter they adapt; None for other
    modules."""
    module, chain = without_param_wrappers(module)
    wrappers: dict[str, list] = {}
    for wrapper in chain:
        wrappers.setdefault(wrapper.parameter_name, []).append(wrapper)
    params = dict(module.named_parameters(recurse=False))
    if not all(getattr(params.get(p.rsplit(".", 1)[-1]), "ndim", 0) == 3 for p in FUSED_EXPERT_PARAMETERS):
        return None
    return module, wrappers


def _expert_sources(name: str, experts: torch.nn.Module, wrappers: dict[str, list]) -> Iterator[TensorSource]:
    """Each expert's ``gate_proj`` / ``up_proj`` / ``down_proj`` weight, named and shaped as transformers'
    ``save_pretrained`` writes them (``experts.{e}.gate_proj.weight``), from the merged 3-D parameters.

    The writers read tensors in order, so the merged 3-D parameter is computed once and kept until the next
    one is asked for (about one layer's experts of memory)."""
    cache: dict[str, torch.Tensor] = {}

    def merged(parameter: str) -> torch.Tensor:
        if parameter not in cache:
            cache.clear()
            weight = dense_stack(experts, parameter).float()
            for wrapper in wrappers.get(parameter, []):
                weight = _with_deltas(weight, wrapper)
            cache[parameter] = weight
        return cache[parameter]

    gate_up, down = experts.gate_up_proj, experts.down_proj
    n_experts, rows, cols = gate_up.shape
    half = rows // 2  # gate first, then up (the experts' forward splits the product in two halves)
    for e in range(n_experts):
        for kind, part in (("gate_proj", slice(0, half)), ("up_proj", slice(half, rows))):
            yield TensorSource(f"{name}.{e}.{kind}.weight", (half, cols), gate_up.dtype,
                               lambda e=e, part=part: merged("gate_up_proj")[e, part])  # fmt: skip
        yield TensorSource(f"{name}.{e}.down_proj.weight", tuple(down.shape[1:]), down.dtype,
                           lambda e=e: merged("down_proj")[e])  # fmt: skip


def _plain_sources(prefix: str, module: torch.nn.Module) -> Iterator[tuple[TensorSource, torch.Tensor]]:
    for pname, param in module.named_parameters(recurse=False):
        shape, dtype = _shape_dtype(param)
        yield TensorSource(f"{prefix}{pname}", shape, dtype, lambda p=param: _dense(p)), param


def merged_tensors(model: torch.nn.Module) -> list[TensorSource]:
    """Every weight of the merged model, in module order, named as ``save_pretrained`` names them.

    Tied weights appear once (under their first name, e.g. ``model.embed_tokens.weight``). Only
    descriptions are built here; each tensor is computed when its ``load()`` is called.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    base = base_model_of(model)
    sources: list[TensorSource] = []
    seen: set[int] = set()
    done: list[str] = []
    for name, module in base.named_modules():
        if any(name.startswith(prefix) for prefix in done):
            continue
        experts = _experts_of(module)
        if experts is not None:
            sources.extend(_expert_sources(name, *experts))
            done.append(name + ".")
            continue
        if isinstance(module, LoraLayer):
            sources.extend(_lora_sources(name, module))
            done.append(name + ".")
            continue
        if isinstance(module, ModulesToSaveWrapper):
            active = (
                module.modules_to_save[module.active_adapter]
                if module.modules_to_save
                else module.original_module
            )
            for sub, child in active.named_modules():
                for source, param in _plain_sources(".".join(filter(None, [name, sub])) + ".", child):
                    if id(param) not in seen:
                        seen.add(id(param))
                        sources.append(source)
            done.append(name + ".")
            continue
        for source, param in _plain_sources(f"{name}." if name else "", module):
            if id(param) not in seen:
                seen.add(id(param))
                sources.append(source)
    return sources


def _save_dtype(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    """16-bit dtype of the merged weights: the model's own 16-bit dtype, else float16."""
    if dtype is not None:
        return dtype
    for param in base_model_of(model).parameters():
        if param.dtype in (torch.float16, torch.bfloat16):
            return param.dtype
    config_dtype = getattr(getattr(model, "config", None), "dtype", None)
    return config_dtype if config_dtype in (torch.float16, torch.bfloat16) else torch.float16


def _write_config(model: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """config.json (without the quantization of a 4-bit base) and generation_config.json."""
    base = base_model_of(model)
    config = base.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = str(dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = getattr(base, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)


def _save_adapter(model: torch.nn.Module, folder: Path) -> None:
    if not hasattr(model, "peft_config"):
        raise TunesmithError(
            f"save_method='lora' saves a LoRA adapter, but this {type(model).__name__} has none. Add one "
            "with FastLanguageModel.get_peft_model(model, ...) and train it, or use "
            "save_method='merged_16bit'."
        )
    model.save_pretrained(folder, safe_serialization=True)


def save_pretrained_merged(
    model: torch.nn.Module,
    save_directory: str | os.PathLike,
    tokenizer=None,
    save_method: str = "merged_16bit",
    *,
    max_shard_size: int | str = "5GB",
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``model`` (LoRA merged in) as a plain transformers folder, or its LoRA adapter alone.

    ``save_method``: ``"merged_16bit"`` writes sharded safetensors + ``config.json`` + tokenizer that
    ``AutoModelForCausalLM.from_pretrained`` loads without PEFT; ``"lora"`` writes the PEFT adapter
    (``adapter_config.json`` + ``adapter_model.safetensors``). 4-bit bases are dequantized first.
    Returns the folder. The folder appears complete or not at all.
    """

    if save_method not in SAVE_METHODS:
        raise TunesmithError(
            f"save_method={save_method!r} is not known. Use one of: {', '.join(SAVE_METHODS)} "
            "(for GGUF files use save_pretrained_gguf)."
        )
    folder = check_output_dir(save_directory, overwrite)
    with disk_full_as_error(folder), atomic_dir(folder) as tmp:
        if save_method == "lora":
            _save_adapter(model, tmp)
        else:
            target = _save_dtype(model, dtype)
            sources = merged_tensors(model)
            shards = shard_plan(sources, target, parse_size(max_shard_size))
            check_free_space(folder.parent, sum(s.nbytes for s in shards))
            write_shards(shards, tmp, target)
            _write_config(model, tmp, target)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder
