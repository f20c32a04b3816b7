"""Convert a ``.gguf`` file once into a transformers folder (safetensors + tokenizer) in the cache.

Parsing a GGUF file in Python takes tens of seconds; the converted folder reloads in well under a
second. The folder carries a fingerprint of its source (size, modification time and a hash of the first
and last MiB), so a changed source file is converted again. The folder is written under a temporary
name and renamed when complete, so a crash never leaves a half-written cache. Processes that need the
same folder at once (the ranks of ``tunesmith run --gpus``, two runs) take a lock: one converts, the
others wait and reuse its folder instead of replacing it under a reader.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from filelock import FileLock

from tunesmith._atomic import atomic_dir, remove_stale_partials
from tunesmith._home import tunesmith_home
from tunesmith.errors import TunesmithError
from tunesmith.models.registry import FAMILIES

__all__ = ["convert_gguf", "cache_dir_for", "fingerprint", "FINGERPRINT_FILE", "gguf_architecture"]

FINGERPRINT_FILE = "tunesmith-source.json"
_CACHE_FORMAT = 1  # bump when the layout of converted folders changes
_EDGE_BYTES = 1 << 20


def cache_dir_for(gguf_path: Path) -> Path:
    """The cache folder for one source file (named after the file, keyed by its absolute path)."""
    gguf_path = Path(gguf_path).resolve()
    key = hashlib.sha256(str(gguf_path).encode()).hexdigest()[:12]
    return tunesmith_home() / "models" / f"{gguf_path.stem}-{key}"


def fingerprint(path: Path) -> dict:
    """What identifies the content of ``path`` cheaply: size, mtime and a hash of its first/last MiB."""
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(_EDGE_BYTES))
        handle.seek(max(0, stat.st_size - _EDGE_BYTES))
        digest.update(handle.read(_EDGE_BYTES))
    return {
        "format": _CACHE_FORMAT,
        "source": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "edges_sha256": digest.hexdigest(),
    }


def _is_fresh(folder: Path, expected: dict) -> bool:
    """True when ``folder`` holds a complete conversion of the source described by ``expected``."""
    try:
        stored = json.loads((folder / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stored == expected and (folder / "config.json").is_file() and _has_weights(folder)


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def gguf_architecture(gguf_path: Path) -> str:
    """The ``general.architecture`` of a GGUF file; a clear error when the file is truncated or corrupt."""
    import gguf

    try:
        reader = gguf.GGUFReader(gguf_path)
        field = reader.get_field("general.architecture")
        arch = field.contents() if field is not None else None
    except Exception as err:  # the reader raises ValueError/IndexError/KeyError on damaged files
        raise TunesmithError(
            f"{gguf_path} is not a readable GGUF file ({type(err).__name__}: {err}); it is probably "
            "truncated or corrupt. Download or export it again."
        ) from None
    if not arch:
        raise TunesmithError(
            f"{gguf_path} has no 'general.architecture' entry, so tunesmith cannot tell which model it "
            "holds. Export it again with llama.cpp or tunesmith."
        )
    return str(arch)


def _check_supported(gguf_path: Path, arch: str) -> None:
    """Raise when no supported family is stored under GGUF architecture ``arch``."""
    supported = sorted({f.gguf_arch for f in FAMILIES.values() if f.gguf_arch})
    if arch not in supported:
        names = ", ".join(f.display_name for f in FAMILIES.values())
        raise TunesmithError(
            f"{gguf_path} holds a '{arch}' model, which tunesmith does not support. Supported GGUF "
            f"architectures: {', '.join(supported)} ({names}). Pick a model of one of these families."
        )


def convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """The cached transformers folder for ``gguf_path``, converting it first if missing or stale."""
    gguf_path = Path(gguf_path).resolve()
    expected = fingerprint(gguf_path)
    try:
        target = cache_dir_for(gguf_path)
    except OSError as err:
        raise _unwritable(err) from None
    if _is_fresh(target, expected):
        return target
    _check_supported(gguf_path, gguf_architecture(gguf_path))
    try:
        with FileLock(_lock_file(target)):
            if _is_fresh(target, expected):  # another process converted it while this one waited
                return target
            remove_stale_partials(target.parent)  # conversions whose process was killed
            print(
                f"tunesmith: converting {gguf_path.name} once into {target} (later loads reuse it)",
                file=sys.stderr,
            )
            with atomic_dir(target) as tmp:
                _convert_into(gguf_path, tmp)
                (tmp / FINGERPRINT_FILE).write_text(json.dumps(expected, indent=2) + "\n")
    except OSError as err:
        raise _unwritable(err) from None
    return target


def _lock_file(target: Path) -> Path:
    """The lock taken while ``target`` is converted (kept out of the cache folder, whose hidden names are
    half-written conversions)."""
    locks = tunesmith_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{target.name}.lock"


def _unwritable(err: OSError) -> TunesmithError:
    """The error for a cache folder that cannot be created or written (full disk, bad TUNESMITH_HOME)."""
    return TunesmithError(
        f"tunesmith could not write its model cache ({type(err).__name__}: {err}). Free disk space, or set "
        "TUNESMITH_HOME to a writable folder (default ~/.cache/tunesmith)."
    )


def _convert_into(gguf_path: Path, folder: Path) -> None:
    """Dequantize ``gguf_path`` to fp32 and save it with its tokenizer in transformers layout."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise TunesmithError(
            f"transformers could not convert {gguf_path} ({type(err).__name__}: {err}). The file may use a "
            "quantization or layout this transformers version cannot read; try an F16/Q8_0 GGUF of the model."
        ) from None
    # A GGUF-loaded model is marked quantized, which blocks save_pretrained and training; the weights are
    # already dequantized to fp32, so the marker is wrong for the converted copy.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # save_pretrained skips the weights off rank 0 of a process group
    if not _has_weights(folder):
        raise TunesmithError(
            f"transformers wrote no weights while converting {gguf_path} (this process is not rank 0 of its "
            "process group, where save_pretrained writes nothing). Load the .gguf file once on rank 0 before "
            "the other processes, or convert it in one process first."
        )
