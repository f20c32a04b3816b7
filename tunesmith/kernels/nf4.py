"""NF4 dequantization reading bitsandbytes' 4-bit storage as it is, so pre-quantized checkpoints load.

Storage (bitsandbytes ``quantize_4bit``, ``quant_type="nf4"``): the weight, flattened row-major, is cut
into blocks of ``blocksize`` (64) elements; each element is a 4-bit index into the 16-value NF4 table
``code``; two indices share a byte, the even element in the high nibble. Each block has a scale
``absmax``. With double quantization (``nested``) those scales are themselves stored as uint8 indices
into a 256-value table ``state2.code``, one float32 ``state2.absmax`` per 256 scales, plus ``offset``:
``absmax[b] = code2[q[b]] * absmax2[b // 256] + offset``. Then ``w[j] = code[idx[j]] * absmax[j // 64]``,
computed in float32 and rounded once to the compute dtype, exactly as bitsandbytes does.
Source: Dettmers et al. 2023 (QLoRA), https://arxiv.org/abs/2305.14314.
"""

import math
import weakref

import torch

from tunesmith.kernels._triton import kernel_for, on_gpu, tl, triton

__all__ = ["nf4_dequantize_forward", "nf4_dequantize_reference", "nf4_dequantize", "is_nf4_weight"]

# Output elements per program: 2,048 bf16 = 4 KB written from 1 KB of packed bytes.
BLOCK = 2048


@triton.jit
def _nf4_dequantize_kernel(
    PACKED, ABSMAX, CODE2, ABSMAX2, OFFSET, CODE, OUT, n, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr,
    NESTED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """1. unpack one nibble per element; 2. the element's block scale (two-level when NESTED);
    3. table value x scale in float32, rounded once."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    byte = tl.load(PACKED + offs // 2, mask=mask, other=0).to(tl.int32)
    idx = tl.where(offs % 2 == 0, byte >> 4, byte & 0xF)
    value = tl.load(CODE + idx, mask=mask, other=0.0)
    block = offs // BLOCKSIZE
    if NESTED:
        qscale = tl.load(ABSMAX + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(CODE2 + qscale, mask=mask, other=0.0) * tl.load(
            ABSMAX2 + block // BLOCKSIZE2, mask=mask, other=0.0
        )
        scale = scale + tl.load(OFFSET)
    else:
        scale = tl.load(ABSMAX + block, mask=mask, other=0.0)
    tl.store(OUT + offs, (value * scale).to(OUT.dtype.element_ty), mask=mask)


# One float32 device copy of each QuantState's offset: making it per call from a Python float would be
# a blocking host-to-device copy on every dequantization (hundreds per training step).
_OFFSETS: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # QuantState defines __eq__, so key by id


def _offset_on(quant_state, device: torch.device) -> torch.Tensor:
    ref, cached = _OFFSETS.get(id(quant_state), (None, None))
    if ref is None or ref() is not quant_state or cached.device != device:
        cached = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=device).reshape(1)
        _OFFSETS[id(quant_state)] = (weakref.ref(quant_state), cached)
    return cached


def nf4_dequantize_forward(
    packed: torch.Tensor, quant_state, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch the kernel for a bitsandbytes packed tensor and its ``QuantState``: ``shape``, ``dtype``."""
    shape, dtype = tuple(quant_state.shape), quant_state.dtype
    n = math.prod(shape)
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=packed.device)
    nested = bool(quant_state.nested)
    if nested:
        state2 = quant_state.state2
        code2, absmax2, blocksize2 = state2.code, state2.absmax, state2.blocksize
        offset = _offset_on(quant_state, packed.device)
    else:
        code2 = absmax2 = offset = quant_state.absmax
        blocksize2 = 1
    kernel_for(_nf4_dequantize_kernel, packed.device)[(triton.cdiv(n, BLOCK),)](
        packed.view(torch.uint8), quant_state.absmax, code2, absmax2, offset, quant_state.code, out, n,
        BLOCKSIZE=quant_state.blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, BLOCK=BLOCK,
        enable_fp_fusion=False,  # a fused multiply-add would round differently from bitsandbytes
    )  # fmt: skip
    return out


def nf4_dequantize_reference(packed: torch.Tensor, quant_state) -> torch.Tensor:
    """Pure PyTorch, bit-exact with bitsandbytes' own dequantization (checked in tests on CPU)."""
    shape, dtype, blocksize = tuple(quant_state.shape), quant_state.dtype, quant_state.blocksize
    n = math.prod(shape)
    absmax = quant_state.absmax
    if quant_state.nested:
        state2 = quant_state.state2
        scales = state2.code[absmax.to(torch.int64)].reshape(-1)
        per_block2 = torch.arange(scales.numel(), device=scales.device) // state2.blocksize
        absmax = scales * state2.absmax[per_block2]
        absmax = absmax + torch.as_tensor(quant_state.offset, dtype=torch.float32, device=absmax.device)
    absmax = absmax.float()
    packed = packed.view(torch.uint8).reshape(-1)
    idx = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n].to(torch.int64)
    values = quant_state.code.to(torch.float32)[idx]
    scale = absmax[torch.arange(n, device=values.device) // blocksize]
    return (values * scale).to(dtype).reshape(shape)


def is_nf4_weight(weight: torch.Tensor) -> bool:
    """True for a bitsandbytes ``Params4bit`` holding NF4 data (what ``Linear4bit.weight`` is)."""
    state = getattr(weight, "quant_state", None)
    return state is not None and getattr(state, "quant_type", None) == "nf4"


def nf4_dequantize(weight: torch.Tensor) -> torch.Tensor:
    """A ``Params4bit`` weight as a dense tensor: the Triton kernel on CUDA, the reference elsewhere."""
    if on_gpu(weight):
        return nf4_dequantize_forward(weight.data, weight.quant_state)
    return nf4_dequantize_reference(weight.data, weight.quant_state)
