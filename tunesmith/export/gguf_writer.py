"""Write one GGUF file, streaming tensors: hyperparameters, tokenizer, then each tensor computed, converted,
written and dropped (peak extra memory about one weight matrix).

Bytes are written by ``gguf.GGUFWriter`` through its typed setters; tensor infos are declared first with
``add_tensor_info`` so that data can follow one tensor at a time with ``write_tensor_data``.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from tqdm.auto import tqdm

from tunesmith.export.gguf_constants import ArchInfo, QuantMethod
from tunesmith.export.gguf_hparams import add_hparams
from tunesmith.export.gguf_names import GGUFTensor
from tunesmith.export.gguf_tokenizer import TokenizerMetadata, write_tokenizer

__all__ = ["write_gguf", "tensor_type", "estimate_bytes"]

_FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)
# The embedding (and the output projection, which often shares it) matters most for quality.
_KEEP_Q8 = ("token_embd.weight", "output.weight")


def tensor_type(tensor: GGUFTensor, method: QuantMethod) -> GGMLQuantizationType:
    """Storage type of one tensor: norms and 1-D tensors in F32, weights in the method's type (F16 when a
    row does not divide into the type's blocks; Q8_0 embeddings for 4-bit methods)."""
    if len(tensor.shape) < 2 or method.weight_type is None:
        return GGMLQuantizationType.F32 if len(tensor.shape) < 2 else GGMLQuantizationType.F16
    qtype = method.weight_type
    if qtype == GGMLQuantizationType.Q4_0 and tensor.name in _KEEP_Q8:
        qtype = GGMLQuantizationType.Q8_0
    block_size, _ = GGML_QUANT_SIZES[qtype]
    return qtype if tensor.shape[-1] % block_size == 0 else GGMLQuantizationType.F16


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block_size) * type_size


def estimate_bytes(tensors: list[GGUFTensor], method: QuantMethod, meta: TokenizerMetadata) -> int:
    """About how large the file will be (tensor data plus the vocabulary)."""
    data = sum(_nbytes(t.shape, tensor_type(t, method)) for t in tensors)
    vocab = sum(len(t.encode("utf-8")) + 16 for t in meta.tokens) + sum(len(m) + 8 for m in meta.merges)
    return data + vocab + (1 << 20)


def _convert(tensor: torch.Tensor, qtype: GGMLQuantizationType) -> np.ndarray:
    data = tensor.detach().to(torch.float32).cpu().numpy()
    return gguf.quants.quantize(data, qtype)


def _write_tensor(writer: gguf.GGUFWriter, data: np.ndarray) -> None:
    """Write one tensor's bytes (the only place tensor data touches the disk)."""
    writer.write_tensor_data(data)


def write_gguf(
    path: Path,
    *,
    arch: ArchInfo,
    config,
    tensors: list[GGUFTensor],
    method: QuantMethod,
    tokenizer_meta: TokenizerMetadata,
    model_name: str,
    context_length: int | None = None,
) -> None:
    """Write the complete GGUF file at ``path`` (the caller makes it atomic)."""
    file_type = method.file_type if method.weight_type is not None else gguf.LlamaFileType.MOSTLY_F16
    writer = gguf.GGUFWriter(path, arch.name)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(model_name)
        add_hparams(writer, arch, config, len(tokenizer_meta.tokens), context_length)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        write_tokenizer(writer, tokenizer_meta)
        types = [tensor_type(t, method) for t in tensors]
        for tensor, qtype in zip(tensors, types, strict=True):
            if qtype in _FLOAT_TYPES:
                dtype = np.float32 if qtype == GGMLQuantizationType.F32 else np.float16
                writer.add_tensor_info(
                    tensor.name, tensor.shape, np.dtype(dtype), _nbytes(tensor.shape, qtype)
                )
            else:
                byte_shape = gguf.quants.quant_shape_to_byte_shape(tensor.shape, qtype)
                writer.add_tensor_info(
                    tensor.name, byte_shape, np.dtype(np.uint8), _nbytes(tensor.shape, qtype), qtype
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with tqdm(total=len(tensors), desc=f"writing {model_name}.gguf", unit="tensor") as bar:
            for tensor, qtype in zip(tensors, types, strict=True):
                _write_tensor(writer, _convert(tensor.load(), qtype))
                bar.update(1)
    finally:
        writer.close()
