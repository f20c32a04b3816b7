"""What this install can do: versions, device, bf16, 4-bit, llama.cpp verification, the built-in model.

``check_environment()`` gathers it as rows; a row marked ``required`` that fails means tunesmith cannot
train here, and its ``fix`` says what to run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from dataclasses import dataclass

from tunesmith.models.quantization import import_bitsandbytes

__all__ = ["Row", "check_environment", "can_train", "four_bit_works"]

_TRAINING_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "safetensors", "gguf")
_DIST_NAMES = {"llama_cpp": "llama-cpp-python"}


@dataclass(frozen=True)
class Row:
    """One line of the report: what was checked, what was found, and whether it is fine."""

    name: str
    value: str
    ok: bool = True
    required: bool = False  # a failed required row means the install cannot train
    fix: str = ""


def _version(module: str) -> str | None:
    """The installed version of ``module``'s distribution, or None when it cannot be imported."""
    try:
        importlib.import_module(module)
    except Exception:  # a broken install raises more than ImportError
        return None
    try:
        return importlib.metadata.version(_DIST_NAMES.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return getattr(importlib.import_module(module), "__version__", "unknown")


def _package_rows() -> list[Row]:
    """One row per package training needs."""
    rows = []
    for module in _TRAINING_PACKAGES:
        version = _version(module)
        rows.append(
            Row(
                module,
                version or "missing",
                ok=version is not None,
                required=True,
                fix=f"pip install '{module}' (or reinstall tunesmith: pip install tunesmith)",
            )
        )
    return rows


def _device_row() -> Row:
    """The device training will use: CUDA name and memory, or the CPU with its core count."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        more = f" (+{torch.cuda.device_count() - 1} more)" if torch.cuda.device_count() > 1 else ""
        return Row("device", f"CUDA {props.name}, {props.total_memory / 2**30:.1f} GiB{more}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _ram_gib()
    ram = f", {memory:.0f} GiB RAM" if memory else ""
    return Row("device", f"CPU ({_cpu_name()}, {cores} cores{ram}) - no CUDA GPU; small models train, slowly")


def _cpu_name() -> str:
    """The CPU model name (Linux), else the machine type."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="ignore"):
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    """Physical memory in GiB, where the OS tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def four_bit_works() -> tuple[bool, str]:
    """Run one tiny NF4 matmul through bitsandbytes on the default device; (works, detail)."""
    import torch

    try:
        bnb = import_bitsandbytes()
    except Exception as err:  # bitsandbytes raises RuntimeError on broken CUDA setups
        return False, f"bitsandbytes cannot be imported ({type(err).__name__}: {err})"
    from tunesmith.models.device import resolve_device

    device = resolve_device(None)
    try:
        dense = torch.randn(32, 64)
        layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(dense.clone(), requires_grad=False, quant_type="nf4")
        layer = layer.to(device)
        x = torch.randn(4, 64, device=device)
        weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        error = ((layer(x) - x @ weight.float().T).norm() / (x @ weight.float().T).norm()).item()
    except Exception as err:  # any failure here means 4-bit is unusable, whatever its type
        return False, f"a 4-bit matmul failed on {device} ({type(err).__name__}: {err})"
    if not error < 1e-3:
        return False, f"a 4-bit matmul on {device} is wrong (relative error {error:.2g})"
    return True, f"works on {device} (bitsandbytes {bnb.__version__})"


def _four_bit_row() -> Row:
    ok, detail = four_bit_works()
    return Row(
        "4-bit (QLoRA)",
        detail,
        ok=ok,
        fix="pip install -U 'bitsandbytes>=0.46' (or train without load_in_4bit)",
    )


def _bf16_row() -> Row:
    from tunesmith.models.device import is_bfloat16_supported

    native = is_bfloat16_supported()
    return Row("bf16", "yes (native)" if native else "no (fp16 on GPU / fp32 on CPU is used)")


def _llama_cpp_row() -> Row:
    """Whether llama.cpp runs here: a multi-token decode of the built-in model's GGUF, in a child process."""
    from tunesmith.errors import TunesmithError
    from tunesmith.export.llama_cpp import INSTALL_HINT, REBUILD_COMMAND, self_test
    from tunesmith.models.registry import ALIASES, DEFAULT_MODEL
    from tunesmith.models.sources import alias_gguf_path

    name = "llama.cpp verification"
    version = _version("llama_cpp")
    if version is None:
        missing = "missing - exported GGUF files cannot be verified"
        return Row(name, missing, ok=False, fix=f"{INSTALL_HINT} (compiles llama.cpp, about 6 minutes)")
    try:
        gguf_file = alias_gguf_path(ALIASES[DEFAULT_MODEL])
    except TunesmithError:
        untested = f"installed (llama-cpp-python {version}), not tested: the built-in model is missing"
        return Row(name, untested, ok=False, fix=ALIASES[DEFAULT_MODEL].install_hint)
    try:
        result = self_test(gguf_file)
    except TunesmithError as err:
        signal_number = getattr(err, "signal_number", None)
        how = f"crashes (signal {signal_number})" if signal_number else "fails"
        return Row(
            name, f"{how} in a multi-token decode (llama-cpp-python {version})", ok=False, fix=REBUILD_COMMAND
        )
    return Row(name, f"works (llama-cpp-python {version}; decoded a {result['batch_tokens']}-token batch)")


def _builtin_model_row() -> Row:
    from tunesmith.errors import TunesmithError
    from tunesmith.models.registry import ALIASES, DEFAULT_MODEL
    from tunesmith.models.sources import alias_gguf_path

    alias = ALIASES[DEFAULT_MODEL]
    try:
        alias_gguf_path(alias)
    except TunesmithError:
        return Row("built-in model", f"{DEFAULT_MODEL} missing", ok=False, fix=alias.install_hint)
    return Row("built-in model", f"{DEFAULT_MODEL} installed")


def _families_row() -> Row:
    from tunesmith.models.registry import FAMILIES

    return Row("supported families", "\n".join(f.capabilities for f in FAMILIES.values()))


def check_environment() -> list[Row]:
    """Every row of the environment report, in display order."""
    import sys

    from tunesmith._version import __version__

    rows = [Row("tunesmith", __version__), Row("python", sys.version.split()[0])]
    rows += _package_rows()
    if any(r.name == "torch" and not r.ok for r in rows):
        return rows
    rows += [
        _device_row(),
        _bf16_row(),
        _four_bit_row(),
        _llama_cpp_row(),
        _builtin_model_row(),
        _families_row(),
    ]
    return rows


def can_train(rows: list[Row]) -> bool:
    """True when no required row failed."""
    return all(r.ok for r in rows if r.required)
