"""Kernel tests: the Triton ones run under Triton's interpreter, in a child process.

``TRITON_INTERPRET=1`` must be set before Triton is first imported and changes how every Triton
function in the process is built, so it cannot be switched on for part of a test session without
leaking into other tests. ``test_kernels_interpreted.py`` therefore runs ``interpreted/`` in a child
pytest with the variable set; this conftest keeps the parent session from collecting that folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the shared tiny-model helpers (_kernel_models)

collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreted"]
