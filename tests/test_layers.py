"""The package's folders are layers and every import points down: the order is the ``layers`` block of
ARCHITECTURE.md (read here, so it is written once). Names on one line are side by side and import neither
each other nor anything above. Function-local imports count too: they are where cycles hide."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tunesmith"
_DOTTED = re.compile(r"tunesmith(\.\w+)+")


def _layers() -> dict[str, int]:
    """Each top-level module or package name of ``tunesmith`` -> its layer number (0 = bottom)."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = text.split("```layers\n", 1)[1].split("```", 1)[0]
    rows = [line.split("#", 1)[0].split() for line in block.splitlines()]
    return {name: number for number, names in enumerate(r for r in rows if r) for name in names}


def _unit(module: str) -> str:
    """``tunesmith.training.lora`` -> ``training``; ``tunesmith.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every tunesmith import in ``path`` (the module ``module``),
    function-local and relative ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(filter(None, [base, node.module or ""]))
            found += [
                (node.lineno, f"{target}.{alias.name}" if not node.module else target) for alias in node.names
            ]
    return [(line, name) for line, name in found if name == "tunesmith" or name.startswith("tunesmith.")]


def _lazy_targets(path: Path) -> list[tuple[int, str]]:
    """Modules named as strings in a lazy ``__init__`` table (``{"SFTTrainer": "tunesmith.training..."}``)."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.fullmatch(node.value)
    ]


def test_every_top_level_module_has_a_layer():
    layers = _layers()
    names = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    names -= {"__init__", "__main__"}  # the package's front door: above every layer
    assert names - set(layers) == set(), "add them to the layers block of ARCHITECTURE.md"
    assert set(layers) - names == set(), "the layers block names modules that do not exist"


def test_imports_point_down_only():
    layers = _layers()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        source = _unit(module)
        if source in ("", "__init__", "__main__"):
            continue
        lazy = _lazy_targets(path) if path.name == "__init__.py" else []
        for line, target in _imports(path, module) + lazy:
            unit = _unit(target)
            if unit == source:
                continue
            if unit not in layers or layers[unit] >= layers[source]:
                how = "across" if layers.get(unit) == layers[source] else "up"
                wrong.append(f"{path.relative_to(REPO)}:{line} imports {target} ({how}: {source} -> {unit})")
    assert wrong == [], "\n".join(wrong)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import os\ndef f():\n    from tunesmith.cli import main\n    from ..recipe import run\n"
    )
    found = [target for _, target in _imports(sample, "tunesmith.training.probe")]
    assert found == ["tunesmith.cli", "tunesmith.recipe"]
