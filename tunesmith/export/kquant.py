"""K-quants (Q4_K_M, Q5_K_M, Q6_K) through llama.cpp's own quantizer, via the llama-cpp-python library.

No llama.cpp checkout or build step: ``llama_model_quantize`` is called in-process on a 16-bit GGUF file.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from types import ModuleType

from tunesmith.errors import TunesmithError
from tunesmith.export.gguf_constants import QuantMethod

__all__ = ["import_llama_cpp", "quantize_with_llama_cpp", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "tunesmith[verify]"'


def import_llama_cpp(purpose: str) -> ModuleType:
    """The ``llama_cpp`` module, or an error that says what needs it and how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise TunesmithError(
            f"{purpose} needs llama.cpp through the llama-cpp-python library, which is not installed. Install it "
            f"with: {INSTALL_HINT} (it compiles llama.cpp once, a few minutes on a laptop). "
            "Or choose a method tunesmith writes alone: f16, bf16, q8_0, q4_0."
        ) from None
    return llama_cpp


def quantize_with_llama_cpp(source: Path, target: Path, method: QuantMethod) -> None:
    """Quantize the 16-bit GGUF ``source`` into ``target`` with llama.cpp (``method`` is a K-quant)."""
    llama_cpp = import_llama_cpp(f"Quantization method '{method.name}'")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(method.file_type)
    params.nthread = max(1, os.cpu_count() or 1)
    code = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(target), ctypes.byref(params))
    if code != 0:
        raise TunesmithError(
            f"llama.cpp could not quantize {source.name} to {method.label} (error code {code}). Its log above "
            "says why; the 16-bit export (quantization_method='f16') still works."
        )
