"""What the data looked like after preparation: the numbers the run report shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DataStats"]


@dataclass
class DataStats:
    """Counts from :func:`tunesmith.data.prepare_dataset` (train split unless named ``eval_*``)."""

    source: str
    layout: str
    template: str  # "prompt template", a chat family name, "tokenizer's own", or "none" (plain text)
    rows: int = 0  # training rows used
    eval_rows: int = 0
    tokens: int = 0  # training tokens after truncation
    answer_tokens: int = 0  # tokens that carry loss
    max_tokens: int = 0  # longest row before truncation
    truncated: int = 0  # rows cut to max_seq_length
    dropped_no_answer: int = 0  # rows whose answer was cut off entirely (they would teach nothing)
    dropped_same_pair: int = 0  # preference pairs (train and held-out) the same tokens once cut
    duplicates: int = 0  # exact duplicate rows found
    duplicates_dropped: bool = False
    max_seq_length: int = 0

    def to_dict(self) -> dict:
        """The numbers as a plain dict (for JSON reports)."""
        return asdict(self)

    def summary(self) -> str:
        """One line for people."""
        parts = [f"{self.rows} training rows", f"{self.tokens:,} tokens ({self.answer_tokens:,} answer)"]
        if self.eval_rows:
            parts.append(f"{self.eval_rows} held-out rows")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to {self.max_seq_length} tokens")
        if self.dropped_no_answer:
            parts.append(f"{self.dropped_no_answer} dropped (answer beyond max_seq_length)")
        if self.dropped_same_pair:
            parts.append(f"{self.dropped_same_pair} pairs dropped (chosen = rejected within max_seq_length)")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates {'dropped' if self.duplicates_dropped else 'kept'}")
        return f"{self.source} [{self.layout}, {self.template}]: " + ", ".join(parts)
