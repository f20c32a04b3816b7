"""The next token of each row from its logits: greedy, or sampled through transformers' own warpers
(temperature, top-k, top-p, min-p, in the order ``generate()`` applies them), after transformers' own
repetition penalty where one is asked for."""

from __future__ import annotations

import torch

from tunesmith.generation.settings import DecodeSettings

__all__ = ["TokenChooser"]


class TokenChooser:
    """``chooser(logits, produced, seen)`` -> the next token ids (B,) for ``settings``; ``seen`` (B, T) holds
    the prompt and the tokens chosen so far (read only with a repetition penalty)."""

    def __init__(self, settings: DecodeSettings, device: torch.device):
        from transformers import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.settings = settings
        self.penalty = (
            RepetitionPenaltyLogitsProcessor(settings.repetition_penalty)
            if settings.repetition_penalty != 1.0
            else None
        )
        self.eos = torch.tensor(settings.eos_ids, dtype=torch.long, device=device)
        self.warpers = []
        if settings.do_sample:
            if settings.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                self.warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(settings.top_p))
            if settings.min_p is not None:
                self.warpers.append(MinPLogitsWarper(settings.min_p))

    def __call__(self, logits: torch.Tensor, produced: int, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens for the ``produced``-th new position (0-based) from logits (B, V)."""
        scores = logits.float()
        if self.penalty is not None:
            scores = self.penalty(seen, scores)
        if produced < self.settings.min_new_tokens and self.eos.numel():
            scores = scores.index_fill(-1, self.eos, -float("inf"))
        if not self.settings.do_sample:
            return scores.argmax(-1)
        for warp in self.warpers:
            scores = warp(None, scores)
        return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)
