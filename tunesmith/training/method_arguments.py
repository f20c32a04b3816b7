"""Arguments of the preference and RL trainers: TRL's ``DPOConfig`` and ``GRPOConfig`` with
tunesmith's device/precision/optimizer resolution and defaults (:class:`TunesmithArgumentsMixin`).

(``ORPOConfig`` lives in :mod:`tunesmith.training.orpo`, since TRL keeps ORPO in ``trl.experimental``.)
Every TRL option keeps its TRL name (``beta``, ``loss_type``, ``num_generations``, ...); the tutorial's
``max_seq_length`` maps to ``max_length`` as in :class:`tunesmith.training.TrainingArguments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from tunesmith.training.arguments import TunesmithArgumentsMixin

__all__ = ["DPOConfig", "GRPOConfig", "MAX_SEQ_LENGTH_FIELD"]

MAX_SEQ_LENGTH_FIELD = field(
    default=None, metadata={"help": "The tutorial's name for max_length (longest prompt + answer in tokens)."}
)


@dataclass
class DPOConfig(TunesmithArgumentsMixin, trl.DPOConfig):
    """``trl.DPOConfig`` (``beta``, ``loss_type``, ``max_length``, ...) resolved for this machine."""

    max_seq_length: int | None = MAX_SEQ_LENGTH_FIELD

    def __post_init__(self):
        if self.max_seq_length is not None:
            self.max_length = self.max_seq_length
        self._resolve_for_machine()
        super().__post_init__()


@dataclass
class GRPOConfig(TunesmithArgumentsMixin, trl.GRPOConfig):
    """``trl.GRPOConfig`` (``num_generations`` = group size, ``beta`` = KL coefficient, ``loss_type``,
    ``max_completion_length``, ``temperature``, ...) resolved for this machine. Generation is the model's
    own ``generate`` (``use_vllm`` stays off), with the LoRA adapters unmerged."""

    def __post_init__(self):
        self._resolve_for_machine()
        super().__post_init__()
