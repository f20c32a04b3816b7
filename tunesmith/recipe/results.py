"""What each stage of a run found, as typed records: ``RunResults`` has one attribute per stage key.

They are what ``run-state.json`` stores under ``results`` (``dataclasses.asdict``), read back typed on
resume, and what the report is built from, so stages and the report never spell a key.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tunesmith.data.stats import DataStats

__all__ = [
    "CheckResult",
    "ProbeResult",
    "LoraResult",
    "TrainResult",
    "EvalResult",
    "ExportResult",
    "VerifyResult",
    "RunResults",
]


@dataclass
class CheckResult:
    """The environment the run found (name -> value: versions, device, precision, llama.cpp)."""

    environment: dict[str, str]


@dataclass
class ProbeResult:
    """The model's greedy answers to the probe questions, in the config's order."""

    answers: list[str]


@dataclass
class LoraResult:
    """The held-out loss of the untrained adapters (None: no held-out rows), and the base model's greedy
    answers to a sample of held-out questions beside their reference answers (empty: not measured)."""

    eval_loss_before: float | None
    held_out_questions: list[str] = field(default_factory=list)
    held_out_references: list[str] = field(default_factory=list)
    held_out_answers: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """The logged training loss per step, the optimizer steps done, and how many rows each step saw
    (``global_batch_text``; None in a state file written before it was kept)."""

    losses: list[tuple[int, float]]
    steps: int
    batch: str | None = None

    def __post_init__(self) -> None:
        self.losses = [(int(step), float(loss)) for step, loss in self.losses]  # JSON gives lists


@dataclass
class EvalResult:
    """The held-out loss after training (None: no held-out rows), and the trained model's answers to the
    held-out questions ``LoraResult`` asked."""

    eval_loss_after: float | None
    held_out_answers: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """What export wrote, relative to the output folder (None: that format was not configured)."""

    lora: str | None = None
    merged: str | None = None
    gguf: str | None = None
    modelfile: str | None = None

    def written(self) -> dict[str, str]:
        """Kind -> relative path of each thing written, in the order they were written."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


@dataclass
class VerifyResult:
    """The GGUF's check in llama.cpp (``VerifyReport.to_dict``), or why it could not run at all.

    ``could_not_run`` (llama.cpp crashed in its child process) keeps the stage undone: the report shows it,
    and the same command verifies again once llama.cpp works.
    """

    gguf: str
    could_not_run: str | None = None
    file_type: str | None = None
    passed: bool = False
    tokenization_identical: bool = False
    top1_agreement: float = 0.0
    top1_agreement_strict: float = 0.0
    top1_threshold: float = 0.0
    greedy_matches: int = 0
    prompts: int = 0

    @property
    def finished(self) -> bool:
        """False when llama.cpp could not run the check (the stage is then left to a re-run)."""
        return self.could_not_run is None


@dataclass
class RunResults:
    """Every stage's result by stage key; None until that stage has run."""

    check: CheckResult | None = None
    probes_before: ProbeResult | None = None
    data: DataStats | None = None
    lora: LoraResult | None = None
    train: TrainResult | None = None
    eval_after: EvalResult | None = None
    probes_after: ProbeResult | None = None
    export: ExportResult | None = None
    verify: VerifyResult | None = None

    def to_json(self) -> dict[str, Any]:
        """The results that exist, as plain data (for the state file)."""
        return {f.name: asdict(value) for f in fields(self) if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        """Typed results from :meth:`to_json`'s output; TypeError/ValueError if the shape does not fit."""
        if not isinstance(data, dict):
            raise TypeError(f"results must be a mapping, not {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown stage results: {', '.join(sorted(unknown))}")
        return cls(**{key: _record_type(key)(**value) for key, value in data.items()})


def _record_type(key: str) -> type:
    """The record class of ``RunResults.<key>`` (its annotation without ``| None``)."""
    hint = typing.get_type_hints(RunResults)[key]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint
