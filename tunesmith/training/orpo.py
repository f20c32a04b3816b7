"""``ORPOTrainer`` and ``ORPOConfig``: TRL's ORPO (odds-ratio preference optimisation: no reference model,
an SFT loss on the chosen answer plus ``beta`` times the log odds ratio) with tunesmith's data preparation
and loop, exactly as :class:`tunesmith.training.preference.DPOTrainer`.

TRL keeps ORPO in ``trl.experimental`` (its interface may change between TRL releases); tunesmith imports it
from there and silences TRL's notice about it, which would otherwise print on every run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TRLExperimentalWarning: see the module docstring
    from trl.experimental.orpo import ORPOConfig as _TrlORPOConfig
    from trl.experimental.orpo import ORPOTrainer as _TrlORPOTrainer

from tunesmith.training.arguments import TunesmithArgumentsMixin, as_tunesmith_arguments
from tunesmith.training.method_arguments import MAX_SEQ_LENGTH_FIELD
from tunesmith.training.preference import PreferenceTrainerMixin

__all__ = ["ORPOConfig", "ORPOTrainer"]


@dataclass
class ORPOConfig(TunesmithArgumentsMixin, _TrlORPOConfig):
    """TRL's ``ORPOConfig`` (``beta`` is ORPO's lambda, ``max_length``, ...) resolved for this machine."""

    max_seq_length: int | None = MAX_SEQ_LENGTH_FIELD

    def __post_init__(self):
        if self.max_seq_length is not None:
            self.max_length = self.max_seq_length
        self._resolve_for_machine()
        super().__post_init__()


class ORPOTrainer(PreferenceTrainerMixin, _TrlORPOTrainer):
    """TRL's ORPO trainer on raw preference pairs, with tunesmith's loop (see the module docstring)."""

    method = "orpo"

    def __init__(
        self,
        model=None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        tokenizer=None,
        template=None,
        fields: dict[str, str] | None = None,
        eval_split: float | None = None,
        **kwargs,
    ):
        args = as_tunesmith_arguments(args, ORPOConfig)
        options = {"template": template, "fields": fields, "eval_split": eval_split}
        processing_class, train_dataset, eval_dataset = self._preference_setup(
            model, tokenizer, processing_class, args, train_dataset, eval_dataset, options
        )
        self._init_trl(
            args,
            kwargs,
            model=model,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
        )
