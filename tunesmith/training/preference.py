"""``DPOTrainer``: TRL's DPOTrainer on tunesmith's preference data, with the shared loop of
:mod:`tunesmith.training.base` (progress bar, ``training_log.jsonl``, ``loss.png`` and ``rewards.png``,
atomic checkpoints, exact resume).

Raw pairs (a file, a ``datasets.Dataset`` or a list of dicts with prompt/chosen/rejected, as text or as
messages) are validated and formatted by :func:`tunesmith.data.preference.prepare_preference_dataset` before
the first step, with the declared prompt template or chat template, exactly as SFT formats its rows. The
reference model is the same model with its LoRA adapters switched off (no second copy of the weights).
With an eval set, the held-out loss, reward margin and preference accuracy (the share of held-out pairs
whose chosen answer the model now prefers over the rejected one, relative to the reference) are measured
before and after training (``trainer.held_out``).
"""

from __future__ import annotations

import trl

from tunesmith.data.preference import ROW_COLUMN, prepare_preference_dataset
from tunesmith.errors import TunesmithError
from tunesmith.training.arguments import as_tunesmith_arguments
from tunesmith.training.base import TunesmithTrainerMixin
from tunesmith.training.lora import keep_4bit_trainable
from tunesmith.training.method_arguments import DPOConfig
from tunesmith.training.plot import plot_metric_panels

__all__ = ["DPOTrainer", "PreferenceTrainerMixin", "REWARDS_PLOT", "HELD_OUT_KEYS"]

REWARDS_PLOT = "rewards.png"
# What TRL logs for a preference batch; the held-out ones carry an "eval_" prefix.
HELD_OUT_KEYS = {
    "loss": "eval_loss",
    "reward_margin": "eval_rewards/margins",
    "accuracy": "eval_rewards/accuracies",
}


class PreferenceTrainerMixin(TunesmithTrainerMixin):
    """What DPO and ORPO share: data preparation, held-out preference metrics, the rewards plot."""

    method = "preference"

    def _preference_setup(
        self, model, tokenizer, processing_class, args, train, evaluation, options
    ) -> tuple:
        """(tokenizer, train set, eval set) after the checks; raw rows are prepared here."""
        if model is None:
            raise TunesmithError(
                f"{type(self).__name__} needs model= (from FastLanguageModel.from_pretrained)."
            )
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise TunesmithError("Pass the tokenizer once: tokenizer= or processing_class=, not both.")
        processing_class = processing_class if processing_class is not None else tokenizer
        if processing_class is None:
            raise TunesmithError(f"{type(self).__name__} needs the tokenizer: tokenizer=tokenizer.")
        if train is None:
            raise TunesmithError(
                f"{type(self).__name__} needs train_dataset= (prompt/chosen/rejected pairs)."
            )
        split = options.pop("eval_split", None)
        if split and evaluation is not None:
            raise TunesmithError(
                f"{type(self).__name__} got both eval_dataset= and eval_split={split}: give the held-out "
                "pairs one way, eval_dataset= for pairs of your own or eval_split= to hold out a share."
            )
        keep_4bit_trainable(model)
        self.data_stats = None
        if ROW_COLUMN not in getattr(train, "column_names", []):
            # ORPO keeps the start of a pair it cuts, as DPO does by default
            options.update(
                max_length=args.max_length, truncation_mode=getattr(args, "truncation_mode", "keep_start")
            )
            prepared = prepare_preference_dataset(
                train, processing_class, seed=args.seed, eval_split=split, **options
            )
            if evaluation is not None and ROW_COLUMN not in getattr(evaluation, "column_names", []):
                evaluation = prepare_preference_dataset(evaluation, processing_class, **options).train
            train, evaluation = prepared.train, evaluation if evaluation is not None else prepared.eval
            self.data_stats = prepared.stats
            self.data_stats.eval_rows = len(evaluation) if evaluation is not None else 0
        self.held_out: dict[str, dict] = {"before": {}, "after": {}}
        self.summary: dict = {}
        return processing_class, _without_row(train), _without_row(evaluation)

    def _measure(self) -> dict:
        metrics = self.evaluate()
        return {name: metrics.get(key) for name, key in HELD_OUT_KEYS.items()}

    def _before_training(self, checkpoint: str | None) -> None:
        if self.eval_dataset is None or not self.args.held_out_eval:
            return
        if checkpoint is None:
            self.held_out["before"] = self._measure()
            return
        for record in self.records():  # measured by the run that wrote the checkpoint
            if record.get("step") == 0 and "eval_loss" in record:
                self.held_out["before"] = {name: record.get(key) for name, key in HELD_OUT_KEYS.items()}
                return

    def _after_training(self) -> None:
        if self.eval_dataset is not None and self.args.held_out_eval:
            self.held_out["after"] = self._measure()

    def plot_curves(self):
        """``loss.png`` and ``rewards.png`` (reward margin and accuracy, training and held-out)."""
        panels = [
            ("reward margin", [("rewards/margins", "chosen - rejected reward")]),
            ("reward accuracy", [("rewards/accuracies", "share of pairs with chosen > rejected")]),
        ]
        drawn = [self.plot_loss(), self._safe_plot(plot_metric_panels, REWARDS_PLOT, panels=panels,
                                                   title=f"{self.method.upper()} rewards")]  # fmt: skip
        return [path for path in drawn if path]

    def _summarize(self, output) -> dict:
        records = [r for r in self.records() if "rewards/margins" in r]
        return {
            **self.base_summary(output),
            "method": self.method,
            "reward_margin_first": records[0]["rewards/margins"] if records else None,
            "reward_margin_last": records[-1]["rewards/margins"] if records else None,
            "reward_accuracy_first": records[0].get("rewards/accuracies") if records else None,
            "reward_accuracy_last": records[-1].get("rewards/accuracies") if records else None,
            "held_out_before": self.held_out["before"],
            "held_out_after": self.held_out["after"],
            "rewards_plot_path": str(self.args.output_dir) + "/" + REWARDS_PLOT,
            "data": self.data_stats.to_dict() if self.data_stats else None,
        }


def _without_row(dataset):
    if dataset is not None and ROW_COLUMN in dataset.column_names:
        return dataset.remove_columns(ROW_COLUMN)
    return dataset


class DPOTrainer(PreferenceTrainerMixin, trl.DPOTrainer):
    """TRL's ``DPOTrainer`` on raw preference pairs, with tunesmith's loop (see the module docstring).

    ``template`` / ``fields`` / ``eval_split`` are those of :func:`tunesmith.data.prepare_dataset`; every TRL
    option (``beta``, ``loss_type``, ``max_length``, ...) goes in ``args=DPOConfig(...)``.
    """

    method = "dpo"

    def __init__(
        self,
        model=None,
        ref_model=None,
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
        args = as_tunesmith_arguments(args, DPOConfig)
        options = {"template": template, "fields": fields, "eval_split": eval_split}
        processing_class, train_dataset, eval_dataset = self._preference_setup(
            model, tokenizer, processing_class, args, train_dataset, eval_dataset, options
        )
        self._init_trl(
            args,
            kwargs,
            model=model,
            ref_model=ref_model,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
        )
