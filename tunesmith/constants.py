"""Facts that several layers share and no layer owns."""

from __future__ import annotations

__all__ = ["IGNORE_INDEX"]

# The label of a token that carries no loss (prompt, padding, a packed row's first token): PyTorch's
# cross_entropy default, and what transformers' causal-LM losses expect.
IGNORE_INDEX = -100
