"""Facts that several layers share and no layer owns."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "EXIT_INTERRUPTED"]

# The label of a token that carries no loss (prompt, padding, a packed row's first token): PyTorch's
# cross_entropy default, and what transformers' causal-LM losses expect.
IGNORE_INDEX = -100

# The exit status of a command stopped by Ctrl-C, as shells report it (128 + SIGINT): `tunesmith run`, its
# launcher under --gpus, and the web app reading its child's status.
EXIT_INTERRUPTED = 130
