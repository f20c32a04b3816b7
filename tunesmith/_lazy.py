"""Lazy public names for a package's ``__init__``: importing the package stays cheap (no torch, gguf or
llama.cpp until a name is used), and each ``__init__`` states its public names in one table."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tunesmith._offline_bitsandbytes import import_bitsandbytes_offline

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose public names live in the modules that
    ``table`` names (``{"SFTTrainer": "tunesmith.training.trainer", ...}``). A name whose module is the
    package's submodule of that same name (``{"rope": "tunesmith.kernels.rope"}``) is that submodule."""

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import_bitsandbytes_offline()  # before the name's module can import peft, which imports it
        module = importlib.import_module(table[name])
        return module if table[name] == f"{package}.{name}" else getattr(module, name)

    names = sorted(table)
    return names, __getattr__, lambda: names
