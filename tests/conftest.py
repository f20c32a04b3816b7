"""Shared test set-up: offline, a test-session cache home, and the `gpu` marker that skips without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests never reach a hub; each test session shares one cache so the embedded model converts once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TUNESMITH_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tunesmith-test-home-{os.getuid()}"))
# Subprocesses (CLI tests) import this checkout even when the package is not installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (data, tokenizers)."""
    if not SHARED.exists():
        pytest.skip("../shared is not present")
    return SHARED
