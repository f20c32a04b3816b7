"""tunesmith.export: merged / adapter folders, GGUF files with an Ollama Modelfile, verification in llama.cpp.

Submodules import lazily (torch, gguf and llama.cpp load only when used).
"""

from __future__ import annotations

import importlib

__all__ = ["save_pretrained_merged", "save_pretrained_gguf", "verify_gguf", "attach_export_methods"]

_WHERE = {
    "save_pretrained_merged": "tunesmith.export.merge",
    "save_pretrained_gguf": "tunesmith.export.gguf",
    "verify_gguf": "tunesmith.export.verify",
    "attach_export_methods": "tunesmith.export.methods",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tunesmith.export' has no attribute {name!r}")
