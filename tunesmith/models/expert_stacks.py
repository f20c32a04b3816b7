"""4-bit expert stacks: a mixture of experts' 3-D weights kept as NF4 codes between forwards.

bitsandbytes quantizes linear layers only, and transformers 5 keeps a mixture-of-experts layer's experts as
two 3-D parameters (``gate_up_proj``, ``down_proj``: experts x out x in), so ``load_in_4bit`` left them in
16-bit, most of the model (14.5 of ~17 GB on 12 layers of Qwen3-30B-A3B). Here each stack is quantized
with bitsandbytes' own NF4 (``quantize_4bit``, blocks of 64, the scales quantized again as
``bnb_4bit_use_double_quant`` does for linear layers) into buffers of its module, and the parameter
keeps its shape and dtype but no memory (one element, broadcast). A forward pre-hook dequantizes the stacks
into their parameters, and a hook after the forward lets them go again, so only the layer that runs holds its
16-bit stacks.
(bitsandbytes' own ``replace_parameter_4bit`` parametrization would be the simpler route, but PEFT up to 0.22
leaves its LoRA proxy behind on a parameter that is already parametrized, one more at every forward.)

The parameter stays the one PEFT adapts (``target_parameters``): its LoRA update is added to the dequantized
weight inside the forward, as for a 16-bit stack. Readers outside a forward (the merge, the fast path's
experts block) take :func:`dense_stack`, which can also give a slice of experts (:func:`expert_slices`).
Quantize where the model will train (the loader does, on its device): ``.to()`` turns each placeholder into a
full tensor of zeros until its layer's next forward lets it go, or until :func:`release_expert_stacks`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.models.registry import FUSED_EXPERT_PARAMETERS

__all__ = [
    "quantize_expert_stacks",
    "release_expert_stacks",
    "dense_stack",
    "expert_slices",
    "is_4bit_stack",
    "stack_tensor_names",
    "STACK_NAMES",
]

BLOCKSIZE = 64
# bitsandbytes quantizes the blocks' scales again in blocks of this many (its nested statistics).
SCALE_BLOCKSIZE = 256
STACK_NAMES = tuple(name.rsplit(".", 1)[-1] for name in FUSED_EXPERT_PARAMETERS)  # gate_up_proj, down_proj
# The buffers of one stack, by suffix: NF4 codes (two per byte), one 8-bit code per block for its scale, the
# 16 values; then, for the scales: one float32 scale per 256 of them, their 256-value table, their mean.
_CODES, _ABSMAX, _TABLE = "_nf4_codes", "_nf4_absmax", "_nf4_table"
_SCALE_ABSMAX, _SCALE_TABLE, _SCALE_OFFSET = "_nf4_scale_absmax", "_nf4_scale_table", "_nf4_scale_offset"
_SUFFIXES = (_CODES, _ABSMAX, _TABLE, _SCALE_ABSMAX, _SCALE_TABLE, _SCALE_OFFSET)


def is_4bit_stack(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s 3-D parameter ``name`` is kept as NF4 codes."""
    return hasattr(module, name + _CODES)


def quantize_expert_stacks(model: nn.Module) -> int:
    """Quantize every mixture-of-experts stack in ``model`` to NF4, one module at a time; returns the number
    of stacks quantized (0 for a model without 3-D experts)."""
    count = 0
    for module in model.modules():
        stacks = [n for n in STACK_NAMES if _is_plain_stack(module, n)]
        if len(stacks) != len(STACK_NAMES):
            continue
        for name in stacks:
            _quantize(module, name)
            count += 1
        module.register_forward_pre_hook(_dequantize_stacks)
        module.register_forward_hook(_release_stacks, always_call=True)
    return count


def release_expert_stacks(model: nn.Module) -> None:
    """Give every 4-bit stack in ``model`` its one-element placeholder back, in the parameter's current dtype.

    For a cast outside a forward, which turns a placeholder into a full tensor of zeros: PEFT's k-bit
    preparation upcasts every 16-bit parameter to float32, and would otherwise hold each stack as 4-byte
    zeros until its layer's first forward."""
    for module in model.modules():
        _release_stacks(module, None, None)


def dense_stack(module: nn.Module, name: str, experts: slice = slice(None)) -> torch.Tensor:
    """``module``'s 3-D stack ``name`` as a 16-bit tensor of its own, whether kept as NF4 codes or not; only
    the ``experts`` slice of it where given (from :func:`expert_slices` for a 4-bit stack)."""
    if not is_4bit_stack(module, name):
        return getattr(module, name).detach()[experts]
    import bitsandbytes.functional as bnb_functional

    param = _parameter(module, name)
    count = param.shape[0]
    start, stop, _ = experts.indices(count)
    weights = math.prod(param.shape[1:])  # per expert
    blocks, scale_blocks = weights // BLOCKSIZE, weights // BLOCKSIZE // SCALE_BLOCKSIZE
    if (start, stop) != (0, count) and not _slices_align(param.shape):
        raise ValueError(
            f"{name}: a stack of {tuple(param.shape)} cannot be read a slice of experts at a time"
        )

    def part(suffix: str, per_expert: float) -> torch.Tensor:
        whole = getattr(module, name + suffix)
        return (
            whole if (start, stop) == (0, count) else whole[int(start * per_expert) : int(stop * per_expert)]
        )

    scales = bnb_functional.QuantState(  # float32 even after a module-wide .to(dtype)
        absmax=part(_SCALE_ABSMAX, scale_blocks).float(),
        code=getattr(module, name + _SCALE_TABLE).float(),
        blocksize=SCALE_BLOCKSIZE,
        dtype=torch.float32,
    )
    state = bnb_functional.QuantState(
        absmax=part(_ABSMAX, blocks),
        shape=(stop - start, *param.shape[1:]),
        code=getattr(module, name + _TABLE).float(),
        blocksize=BLOCKSIZE,
        quant_type="nf4",
        dtype=param.dtype,
        offset=getattr(module, name + _SCALE_OFFSET).float(),
        state2=scales,
    )
    return bnb_functional.dequantize_4bit(part(_CODES, weights / 2), state)


def expert_slices(module: nn.Module, name: str, max_bytes: int) -> list[slice]:
    """Consecutive slices of experts, of even size, that cover ``module``'s 4-bit stack ``name``, each about
    ``max_bytes`` or less once dequantized (one expert more at most), for a reader that needs one slice at a
    time. The whole stack as one slice where it is not 4-bit, fits, or cannot be cut (an expert's weights must
    fill whole blocks of both levels)."""
    stack = getattr(module, name)
    count, per_expert = stack.shape[0], math.prod(stack.shape[1:]) * stack.element_size()
    if not is_4bit_stack(module, name) or count * per_expert <= max_bytes or not _slices_align(stack.shape):
        return [slice(0, count)]
    pieces = -(-count * per_expert // max_bytes)
    step = -(-count // pieces)
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def _slices_align(shape: torch.Size) -> bool:
    """Whether each expert of a stack this shape starts a block of codes and a block of scales."""
    return math.prod(shape[1:]) % (BLOCKSIZE * SCALE_BLOCKSIZE) == 0


def stack_tensor_names(model: nn.Module) -> list[str]:
    """Names, from ``model``, of every 4-bit stack's placeholder parameter and code buffers: what DDP must
    neither broadcast into (a broadcast one-element tensor cannot be written) nor send again at each forward
    (the codes never change, and every rank quantized the same weights)."""
    names = []
    for prefix, module in model.named_modules():
        for name in STACK_NAMES:
            if is_4bit_stack(module, name):
                dot = f"{prefix}." if prefix else ""
                names += [f"{dot}{name}"] + [f"{dot}{name}{suffix}" for suffix in _SUFFIXES]
    return names


def _is_plain_stack(module: nn.Module, name: str) -> bool:
    param = module._parameters.get(name)
    return (
        param is not None
        and param.dim() == 3
        and param.is_floating_point()
        and not is_4bit_stack(module, name)
    )


def _quantize(module: nn.Module, name: str) -> None:
    import bitsandbytes.functional as bnb_functional

    param = module._parameters[name]
    codes, state = bnb_functional.quantize_4bit(
        param.data, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=True
    )
    buffers = {
        _CODES: codes,
        _ABSMAX: state.absmax,
        _TABLE: state.code,
        _SCALE_ABSMAX: state.state2.absmax,
        _SCALE_TABLE: state.state2.code,
        _SCALE_OFFSET: state.offset.reshape(()),
    }
    for suffix, tensor in buffers.items():
        module.register_buffer(name + suffix, tensor)
    param.data = _placeholder(param)


def _placeholder(param: torch.Tensor) -> torch.Tensor:
    """One element broadcast to the stack's shape: shape, dtype and device stay what PEFT reads."""
    return torch.zeros((), dtype=param.dtype, device=param.device).expand(param.shape)


def _parameter(module: nn.Module, name: str) -> nn.Parameter:
    """The stack's parameter, also while PEFT's LoRA parametrizes it during a forward."""
    if torch.nn.utils.parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return module._parameters[name]


@torch.no_grad()
def _dequantize_stacks(module: nn.Module, args) -> None:
    for name in STACK_NAMES:
        if is_4bit_stack(module, name):
            _parameter(module, name).data = dense_stack(module, name)


@torch.no_grad()
def _release_stacks(module: nn.Module, args, output) -> None:
    # Safe for the backward: what it reads is another tensor (the stack plus its LoRA update) or a view or
    # copy of the dense stack, which keeps that memory alive on its own; a new ``.data`` does not touch it.
    for name in STACK_NAMES:
        if is_4bit_stack(module, name):
            param = _parameter(module, name)
            param.data = _placeholder(param)
