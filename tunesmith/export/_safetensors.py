"""Write sharded safetensors files one tensor at a time.

``safetensors.torch.save_file`` needs a whole shard in memory; here the header (names, dtypes, shapes,
byte offsets) is computed from the tensor descriptions first, then each tensor is computed, written and
dropped. The layout is the safetensors format: an 8-byte little-endian header length, the JSON header
(padded with spaces to 8 bytes), then the raw little-endian data. ``safetensors`` itself reads it back.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tunesmith.errors import TunesmithError
from tunesmith.export.tensor_source import TensorSource

__all__ = ["Shard", "parse_size", "shard_plan", "write_shards"]

_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass
class Shard:
    """The tensors of one output file, in write order."""

    sources: list[TensorSource]
    nbytes: int = 0
    filename: str = ""


def parse_size(size: int | str) -> int:
    """Bytes in ``5GB`` / ``500MB`` / ``2GiB`` / an integer."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise TunesmithError(
            f"max_shard_size={size!r} is not a size. Write it like '5GB', '500MB' or 2000000000."
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def _nbytes(source: TensorSource, dtype: torch.dtype) -> int:
    count = 1
    for dim in source.shape:
        count *= dim
    return count * (dtype.itemsize if source.dtype.is_floating_point else source.dtype.itemsize)


def shard_plan(sources: list[TensorSource], dtype: torch.dtype, max_bytes: int) -> list[Shard]:
    """Split tensors into files of at most ``max_bytes`` (a larger single tensor gets its own file)."""
    shards = [Shard([])]
    for source in sources:
        size = _nbytes(source, dtype)
        if shards[-1].sources and shards[-1].nbytes + size > max_bytes:
            shards.append(Shard([]))
        shards[-1].sources.append(source)
        shards[-1].nbytes += size
    total = len(shards)
    for index, shard in enumerate(shards, start=1):
        shard.filename = (
            "model.safetensors" if total == 1 else f"model-{index:05d}-of-{total:05d}.safetensors"
        )
    return shards


def _header(shard: Shard, dtype: torch.dtype) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for source in shard.sources:
        out_dtype = dtype if source.dtype.is_floating_point else source.dtype
        size = _nbytes(source, dtype)
        entries[source.name] = {
            "dtype": _DTYPE_NAMES[out_dtype],
            "shape": list(source.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write_shards(shards: list[Shard], folder: Path, dtype: torch.dtype) -> None:
    """Write every shard into ``folder`` (plus the index file when there are several)."""
    total = sum(len(s.sources) for s in shards)
    weight_map: dict[str, str] = {}
    with tqdm(total=total, desc="merging and saving", unit="tensor") as bar:
        for shard in shards:
            with open(folder / shard.filename, "wb") as handle:
                handle.write(_header(shard, dtype))
                for source in shard.sources:
                    tensor = source.load()
                    if tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    handle.write(_tensor_bytes(tensor))
                    del tensor
                    weight_map[source.name] = shard.filename
                    bar.update(1)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(s.nbytes for s in shards)}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )
