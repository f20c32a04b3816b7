"""Every call into llama.cpp (llama-cpp-python) runs here, in a child process.

llama.cpp is native code: a build that does not run on this CPU, or a bad file, ends the process it runs in
with a signal, and no Python ``try`` can catch that. So verification, K-quant quantization and the
``tunesmith check`` self-test each run in a short-lived child (:mod:`tunesmith.export._llama_cpp_child`).
When the child dies (a signal, out of memory, a time-out), the caller gets one :class:`LlamaCppCrashed`
error that names what crashed, how, and the command that rebuilds llama-cpp-python portably; the user's
run, notebook kernel and files are unharmed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.export._llama_cpp_child import JOB_FILE, RESULT_FILE

__all__ = [
    "LLAMA_CPP_CMAKE_ARGS",
    "INSTALL_HINT",
    "REBUILD_COMMAND",
    "LlamaCppCrashed",
    "LlamaCppPrompt",
    "llama_cpp_version",
    "require_llama_cpp",
    "evaluate_in_llama_cpp",
    "quantize_in_llama_cpp",
    "self_test",
]

# How llama-cpp-python must be built (README's install commands and .ci/run use exactly this; a test checks).
# It compiles llama.cpp for the CPU it is installed on (-march=native: AVX2, AVX-512, VNNI where present),
# minus AMX: GCC up to 12 declares the tile-config operand of `_tile_loadconfig` as 8 bytes, so at -O3 it
# drops the stores that fill the other 56, and llama.cpp's AMX matmul (quantized types, batches of 2+
# tokens) loads a garbage tile config: `ldtilecfg` faults and the process dies with SIGSEGV.
LLAMA_CPP_CMAKE_ARGS = "-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"
INSTALL_HINT = f'CMAKE_ARGS="{LLAMA_CPP_CMAKE_ARGS}" pip install --no-cache-dir "tunesmith[verify]"'
REBUILD_COMMAND = (
    f'CMAKE_ARGS="{LLAMA_CPP_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir --no-deps '
    '"llama-cpp-python>=0.3.7"'
)
_SECONDS_PER_GB = 240  # time-out per GB of GGUF file, beyond the fixed minute
_THREADS = max(1, (os.cpu_count() or 2) // 2)


class LlamaCppCrashed(TunesmithError):
    """llama.cpp's child process died (a signal, out of memory, a time-out) or could not do its job."""

    def __init__(self, message: str, signal_number: int | None = None):
        super().__init__(message)
        self.signal_number = signal_number


@dataclass(frozen=True)
class LlamaCppPrompt:
    """What llama.cpp made of one prompt: its tokenization, the logits at each given id, a greedy reply."""

    tokens: list[int]
    logits: np.ndarray  # (len(ids), vocab) float32
    greedy: list[int]


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python version, or None when it is not installed (nothing is loaded)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def require_llama_cpp(purpose: str) -> None:
    """Raise a clear error when llama-cpp-python is not installed; ``purpose`` says what needs it."""
    if llama_cpp_version() is None:
        raise TunesmithError(
            f"{purpose} needs llama.cpp through the llama-cpp-python library, which is not installed. "
            f"Install it with: {INSTALL_HINT} (it compiles llama.cpp once, a few minutes on a laptop)."
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _crash_message(what: str, returncode: int, stderr: str) -> LlamaCppCrashed:
    number = -returncode
    name = _signal_name(number)
    cause = (
        "it was killed (signal 9), most often because memory ran out"
        if number == signal.SIGKILL
        else f"it crashed with signal {number} ({name})"
    )
    tail = " ".join(stderr.strip().splitlines()[-3:])
    return LlamaCppCrashed(
        f"llama.cpp could not finish {what}: {cause}. It ran in a child process, so nothing else was lost. "
        + (f"Its last words: {tail!r}. " if tail else "")
        + "A llama-cpp-python build made for another CPU, or built with its default flags on a CPU with AMX "
        f"(a compiler bug), does this; rebuild it with: {REBUILD_COMMAND} and then run `tunesmith check`, "
        "which tests llama.cpp for real.",
        signal_number=number,
    )


def _run(kind: str, job: dict, *, what: str, timeout: float) -> tuple[dict, Path]:
    """Run one job in the child; (its result, the folder its arrays are in). The caller removes the folder."""
    folder = Path(tempfile.mkdtemp(prefix="tunesmith-llama-cpp-"))
    (folder / JOB_FILE).write_text(json.dumps({"kind": kind, **job}), encoding="utf-8")
    command = [sys.executable, "-m", "tunesmith.export._llama_cpp_child", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        shutil.rmtree(folder, ignore_errors=True)
        raise LlamaCppCrashed(
            f"llama.cpp did not finish {what} within {timeout:.0f} seconds and was stopped. A GGUF file much "
            "larger than this machine's memory, or a stalled build, does this; try a smaller quantization "
            f"or rebuild llama-cpp-python with: {REBUILD_COMMAND}"
        ) from None
    result_path = folder / RESULT_FILE
    if done.returncode < 0 or not result_path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        if done.returncode < 0:
            raise _crash_message(what, done.returncode, done.stderr)
        raise LlamaCppCrashed(
            f"llama.cpp's child process for {what} ended (exit code {done.returncode}) without a result: "
            f"{' '.join(done.stderr.strip().splitlines()[-3:])!r}. Check the install with `tunesmith check`."
        )
    result = json.loads(result_path.read_text(encoding="utf-8"))
    if not result.get("ok"):
        shutil.rmtree(folder, ignore_errors=True)
        raise LlamaCppCrashed(
            f"llama.cpp could not do {what}: {result.get('error')}. Check that the file is a complete GGUF "
            "file written by tunesmith or llama.cpp, and that `tunesmith check` says llama.cpp works."
        )
    return result, folder


def _timeout(path: Path) -> float:
    size_gb = path.stat().st_size / 1e9 if path.is_file() else 0.0
    return 60.0 + _SECONDS_PER_GB * size_gb


def evaluate_in_llama_cpp(
    gguf_path: Path,
    prompts: list[tuple[str, list[int]]],
    *,
    max_new_tokens: int,
    eos: set[int],
    n_ctx: int = 1024,
) -> list[LlamaCppPrompt]:
    """For each ``(text, ids)``: llama.cpp's tokenization of ``text``, its logits at each of ``ids`` and a
    greedy continuation of ``ids`` (stopping at ``eos`` or the file's own end token)."""
    require_llama_cpp("Verifying a GGUF file")
    job = {
        "gguf": str(gguf_path),
        "n_ctx": n_ctx,
        "n_threads": _THREADS,
        "eos": sorted(eos),
        "max_new_tokens": max_new_tokens,
        "prompts": [{"text": text, "ids": list(ids)} for text, ids in prompts],
    }
    result, folder = _run("evaluate", job, what=f"verifying {gguf_path.name}", timeout=_timeout(gguf_path))
    try:
        return [
            LlamaCppPrompt(p["tokens"], np.load(folder / p["logits"]), p["greedy"]) for p in result["prompts"]
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def quantize_in_llama_cpp(source: Path, target: Path, file_type: int, label: str) -> None:
    """Quantize the 16-bit GGUF ``source`` into ``target`` with llama.cpp's quantizer (``file_type``: its
    LlamaFileType number; ``label`` names the method in errors)."""
    require_llama_cpp(f"Quantization method '{label}'")
    job = {"source": str(source), "target": str(target), "ftype": file_type, "n_threads": os.cpu_count() or 1}
    result, folder = _run(
        "quantize", job, what=f"quantizing {source.name} to {label}", timeout=_timeout(source)
    )
    shutil.rmtree(folder, ignore_errors=True)
    if result["code"] != 0:
        raise TunesmithError(
            f"llama.cpp could not quantize {source.name} to {label} (error code {result['code']}). The "
            "16-bit export (quantization_method='f16') and q8_0 still work without it."
        )


def self_test(gguf_path: Path, text: str = "The heart pumps blood through the body and") -> dict:
    """Load ``gguf_path`` in llama.cpp and decode a batch of several tokens; raises :class:`LlamaCppCrashed`
    when this build cannot. Returns ``{"batch_tokens": N, "seconds": S}``."""
    require_llama_cpp("The llama.cpp self-test")
    job = {"gguf": str(gguf_path), "text": text, "n_threads": _THREADS}
    result, folder = _run("selftest", job, what="the self-test (a multi-token decode)", timeout=120.0)
    shutil.rmtree(folder, ignore_errors=True)
    return {"batch_tokens": result["batch_tokens"], "seconds": result["seconds"]}
