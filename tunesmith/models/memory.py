"""Will the weights fit? ``weight_bytes`` and ``require_room_for_weights``, checked before loading.

A model that does not fit its device fails minutes into loading (on a GPU with an out-of-memory error,
on a CPU often by the system killing the process). The size is known before that: the model is built on
PyTorch's meta device from its config (no memory, no weights read), and each parameter is counted as
loading will store it. bitsandbytes quantizes linear layers only: the input embedding, the norms, the
output layer and a mixture-of-experts model's experts (3-D parameters in transformers 5) keep the 16-bit
size, so a 4-bit Qwen3-30B-A3B still needs ~58 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from tunesmith.errors import TunesmithError

__all__ = ["WeightBytes", "weight_bytes", "require_room_for_weights", "available_host_bytes"]

GB = 1e9
# NF4: half a byte per weight, plus per 64-weight block an 8-bit scale (double quantization) and per
# 256 blocks a float32 one.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES_PER_WEIGHT = 1.0


@dataclass(frozen=True)
class WeightBytes:
    """Bytes the loaded weights take (``total``), of which ``unquantized_experts`` are 3-D expert
    parameters that a 4-bit/8-bit load reads in 16-bit (a 4-bit load quantizes them afterwards,
    ``expert_stacks.py``; an 8-bit load keeps them)."""

    total: int
    unquantized_experts: int


def available_host_bytes() -> int:
    """Memory the operating system can still give this process (``MemAvailable``), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _meta_model(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the modules and shapes, no memory
        return AutoModelForCausalLM.from_config(config)


def weight_bytes(
    config, dtype: torch.dtype, load_in_4bit: bool = False, load_in_8bit: bool = False
) -> WeightBytes:
    """What ``config``'s model weighs once loaded in ``dtype`` (or 4-bit / 8-bit linear layers)."""
    model = _meta_model(config)
    per_weight = NF4_BYTES_PER_WEIGHT if load_in_4bit else INT8_BYTES_PER_WEIGHT if load_in_8bit else None
    output = model.get_output_embeddings()
    quantized = set()
    if per_weight is not None:
        quantized = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and m is not output}
    element = torch.empty((), dtype=dtype).element_size()
    total = experts = 0
    for param in model.parameters():  # shared (tied) parameters once
        if id(param) in quantized:
            total += param.numel() * per_weight
            continue
        total += param.numel() * element
        if per_weight is not None and param.ndim == 3:
            experts += param.numel() * element
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return WeightBytes(int(total), int(experts))


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return available_host_bytes()


def _precision(dtype: torch.dtype, load_in_4bit: bool, load_in_8bit: bool) -> str:
    if load_in_4bit:
        return "4-bit"
    if load_in_8bit:
        return "8-bit"
    return str(dtype).removeprefix("torch.")


def require_room_for_weights(
    config,
    folder,
    dtype: torch.dtype,
    device: torch.device,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    free_bytes: int | None = None,
) -> WeightBytes:
    """Raise a clear error when the weights alone would not fit ``device``'s free memory (``free_bytes``:
    measured when not given); returns what they take."""
    need = weight_bytes(config, dtype, load_in_4bit, load_in_8bit)
    free = _free_bytes(device) if free_bytes is None else free_bytes
    if need.total <= free:
        return need
    where = "this machine" if device.type == "cpu" else str(device)
    experts = (
        f" (the experts load in 16-bit, {need.unquantized_experts / GB:.1f} GB of it, and become 4-bit "
        "after loading: bitsandbytes quantizes linear layers only)"
        if need.unquantized_experts
        else ""
    )
    ways = ["pick a smaller model", "free memory that other programs hold"]
    if not (load_in_4bit or load_in_8bit):
        smaller = weight_bytes(config, dtype, load_in_4bit=True).total
        ways.insert(0, f"load it with load_in_4bit=True (about {smaller / GB:.1f} GB)")
    if device.type == "cpu" and torch.cuda.is_available():
        ways.insert(0, "load it on the GPU")
    raise TunesmithError(
        f"The model in {folder} does not fit: its weights need about {need.total / GB:.1f} GB in "
        f"{_precision(dtype, load_in_4bit, load_in_8bit)}{experts}, and {where} has "
        f"{free / GB:.1f} GB free, before any training memory. To go on, " + ", or ".join(ways) + "."
    )
