"""``SFTTrainer``: TRL's SFTTrainer with the tutorial's arguments, tunesmith's data checks, progress, logs
and plots.

Accepts both TRL's current style (``args=SFTConfig(...)``, ``processing_class=``) and the older style the
tutorial uses (``tokenizer=``, ``dataset_text_field=``, ``max_seq_length=``, ``dataset_num_proc=``,
``packing=``, ``args=TrainingArguments(...)``). Raw data sets are validated, formatted and tokenized by
:mod:`tunesmith.data` before the first step (rows, tokens, truncations and duplicates land in
``trainer.data_stats``). Texts formatted by the user, with their source columns kept beside them, declare
the prompt template they follow on the tokenizer (:mod:`tunesmith.data.text_template`). Training writes
``training_log.jsonl`` and ``loss.png`` into the output folder, checkpoints atomically, and with an eval set
measures held-out loss before and after (``trainer.summary``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import trl
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tunesmith._distributed import world_size
from tunesmith.data.prepare import prepare_dataset
from tunesmith.data.stats import DataStats
from tunesmith.data.text_template import COLUMN_PLACEHOLDERS, adopt_text_template
from tunesmith.errors import TunesmithError
from tunesmith.training.arguments import as_tunesmith_arguments
from tunesmith.training.callbacks import PLOT_NAME, JsonlLogCallback, ProgressBarCallback
from tunesmith.training.checkpoint import AtomicCheckpointMixin, find_checkpoint, remove_partial_checkpoints
from tunesmith.training.distributed import fault_injection
from tunesmith.training.lora import keep_4bit_trainable
from tunesmith.training.no_telemetry import NoTelemetryMixin
from tunesmith.training.plot import plot_loss_curve, read_log

__all__ = ["SFTTrainer"]

logger = logging.getLogger(__name__)

# Below this many rows, spreading dataset preparation over processes costs more than it saves.
_MULTIPROCESS_MIN_ROWS = 5000
_UNLIMITED = 10**9


class SFTTrainer(NoTelemetryMixin, AtomicCheckpointMixin, trl.SFTTrainer):
    """TRL's ``SFTTrainer`` that also takes the tutorial's arguments (see the module docstring)."""

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
        dataset_text_field: str | None = None,
        max_seq_length: int | None = None,
        dataset_num_proc: int | None = None,
        packing: bool | None = None,
        eval_split=None,
        responses_only: bool = True,
        **kwargs,
    ):
        if model is None:
            raise TunesmithError("SFTTrainer needs model= (a model from FastLanguageModel.from_pretrained).")
        if tokenizer is not None and processing_class is not None and tokenizer is not processing_class:
            raise TunesmithError(
                "Pass the tokenizer once: tokenizer= (tutorial style) or processing_class=, not both."
            )
        processing_class = processing_class if processing_class is not None else tokenizer
        if processing_class is None:
            raise TunesmithError(
                "SFTTrainer needs the tokenizer: SFTTrainer(model=..., tokenizer=tokenizer, ...)."
            )
        args = as_tunesmith_arguments(
            args,
            dataset_text_field=dataset_text_field,
            max_length=max_seq_length,
            dataset_num_proc=dataset_num_proc,
            packing=packing,
        )
        _refuse_sharded_4bit(model, args)
        keep_4bit_trainable(model)
        self.data_stats: DataStats | None = None
        train_dataset, eval_dataset = self._prepare_data(
            train_dataset,
            eval_dataset,
            processing_class,
            args,
            kwargs.pop("formatting_func", None),
            eval_split,
            responses_only,
        )
        if len(train_dataset) < _MULTIPROCESS_MIN_ROWS:
            args.dataset_num_proc = None
        self._jsonl = JsonlLogCallback(args.output_dir)
        callbacks = [*(kwargs.pop("callbacks", None) or []), ProgressBarCallback(), self._jsonl]
        callbacks += fault_injection()
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        for default in (ProgressCallback, PrinterCallback):  # replaced by ProgressBarCallback
            self.remove_callback(default)
        self.held_out_loss: dict[str, float | None] = {"before": None, "after": None}
        self.summary: dict = {}

    # -- data ---------------------------------------------------------------------------------------
    def _prepare_data(self, train, evaluation, tokenizer, args, formatting_func, eval_split, responses_only):
        """Validate, format and tokenize raw data sets with tunesmith.data (tokenized ones pass through)."""
        if train is None:
            raise TunesmithError("SFTTrainer needs train_dataset= (rows to learn from).")
        if "input_ids" in getattr(train, "column_names", []):
            if eval_split is not None:
                raise TunesmithError(
                    "eval_split works on raw rows; this train_dataset is already tokenized. "
                    "Pass eval_dataset= instead."
                )
            return train, evaluation
        if formatting_func is not None:
            train = _apply_formatting(train, formatting_func, args.dataset_text_field)
            evaluation = _apply_formatting(evaluation, formatting_func, args.dataset_text_field)
        options = {
            "max_seq_length": args.max_length or _UNLIMITED,
            "on_too_long": args.on_too_long,
            "duplicates": "keep",
            "responses_only": responses_only,
            "seed": args.seed,
        }
        text_field = args.dataset_text_field
        columns = getattr(train, "column_names", None) or []
        if text_field in columns:  # the tutorial's way: rows already formatted into one text column
            options.update(layout="text", fields={"text": text_field})
            # Chat, probes and export must serve the prompt these texts hold, not the tokenizer's own format.
            sources = [c for c in columns if c in COLUMN_PLACEHOLDERS and c != text_field]
            adopt_text_template(tokenizer, list(train[text_field]), {c: list(train[c]) for c in sources})
        prepared = prepare_dataset(
            train, tokenizer, eval_split=eval_split if evaluation is None else None, **options
        )
        self.data_stats = prepared.stats
        if evaluation is not None and "input_ids" not in getattr(evaluation, "column_names", []):
            evaluation_prepared = prepare_dataset(evaluation, tokenizer, **options)
            evaluation = evaluation_prepared.train
            self.data_stats.eval_rows = len(evaluation)
        return prepared.train, evaluation if evaluation is not None else prepared.eval

    # -- training -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train (resuming if asked), held-out loss before and after; writes the log and the loss plot."""
        output_dir = Path(self.args.output_dir)
        if self.args.should_save:
            removed = remove_partial_checkpoints(output_dir)
            if removed:
                logger.warning("Removed %d half-written checkpoint folder(s) in %s.", removed, output_dir)
        checkpoint = find_checkpoint(resume_from_checkpoint, str(output_dir))
        if self.args.should_save:  # rank 0 alone writes the log
            self._jsonl.start(_checkpoint_step(checkpoint))
            _say_global_batch(self.args)
        else:
            self._jsonl.resumed_from = _checkpoint_step(checkpoint)
        self._measure_before(checkpoint)
        self._wrap_after_evaluation()
        try:
            output = super().train(
                resume_from_checkpoint=checkpoint,
                trial=trial,
                ignore_keys_for_eval=ignore_keys_for_eval,
                **kwargs,
            )
        except BaseException:
            self.plot_loss()  # the curve so far, on interruption too
            self._release_model()
            raise
        if self.eval_dataset is not None and self.args.held_out_eval:
            if self.held_out_loss["before"] is None:  # FSDP2: measured by the Trainer at step 0
                self.held_out_loss["before"] = _first_eval_loss(self.state.log_history)
            self.held_out_loss["after"] = self.evaluate().get("eval_loss")
        self.plot_loss()
        self.summary = self._summarize(output)
        self._release_model()
        return output

    def _wrap_after_evaluation(self) -> None:
        """Let training wrap the model in DDP although it was evaluated first (held-out loss before).

        accelerate (1.15) marks a model it prepared for evaluation as prepared, and its guard against wrapping
        twice then skips the DDP wrap when training starts: each rank would train alone on its own rows.
        Forgetting the mark (on our own model object) lets ``prepare`` wrap it as on a fresh start.
        """
        if (
            self.accelerator.num_processes > 1
            and not self.is_fsdp_enabled
            and self.model_wrapped is self.model
        ):
            vars(self.model).pop("_is_accelerate_prepared", None)

    def _release_model(self) -> None:
        """Hand the user's model back as it was: training wraps its forward in (bf16) autocast, which
        would make later generation, export checks and fp32 comparisons run in reduced precision."""
        self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)

    def _measure_before(self, checkpoint: str | None) -> None:
        if self.eval_dataset is None or not self.args.held_out_eval:
            return
        if checkpoint is None:
            if self.is_fsdp_enabled:
                # FSDP2 shards the model and its optimizer in one prepare call, so an evaluation before
                # training cannot prepare the model alone: the Trainer's own evaluation at step 0 runs
                # once both are prepared.
                self.args.eval_on_start = True
                return
            self.held_out_loss["before"] = self.evaluate().get("eval_loss")
            return
        for record in read_log(self._jsonl.path):  # measured by the run that wrote the checkpoint
            if record.get("step") == 0 and "eval_loss" in record:
                self.held_out_loss["before"] = record["eval_loss"]
                return

    def plot_loss(self) -> Path | None:
        """Write ``loss.png`` in the output folder from the training log; returns its path."""
        if not self.args.should_save:
            return None
        try:
            return plot_loss_curve(read_log(self._jsonl.path), Path(self.args.output_dir) / PLOT_NAME)
        except Exception as err:  # a plot must never hide the real outcome of training
            logger.warning("Could not draw the loss curve: %s", err)
            return None

    def _summarize(self, output) -> dict:
        """The numbers a run report shows."""
        records = read_log(self._jsonl.path)
        losses = [r["loss"] for r in records if "loss" in r]
        runtime = output.metrics.get("train_runtime") or 0.0
        steps_run = max(1, self.state.global_step - (self._jsonl.resumed_from or 0))
        tokens = self._total_train_tokens
        return {
            "steps": self.state.global_step,
            "train_seconds": runtime,
            "seconds_per_step": runtime / steps_run,
            "train_tokens": tokens,
            "tokens_per_second": tokens / runtime if runtime else None,
            "final_loss": losses[-1] if losses else None,
            "eval_loss_before": self.held_out_loss["before"],
            "eval_loss_after": self.held_out_loss["after"],
            "precision": self.args.precision,
            "global_batch": self.args.global_batch,
            "processes": world_size(),
            "device": str(self.args.device),
            "log_path": str(self._jsonl.path),
            "plot_path": str(Path(self.args.output_dir) / PLOT_NAME),
            "data": self.data_stats.to_dict() if self.data_stats else None,
        }


def _refuse_sharded_4bit(model, args) -> None:
    """QLoRA under FSDP2 would need bitsandbytes' 4-bit storage sharded as the compute dtype; tunesmith's
    4-bit weights are stored as uint8 for the fused kernels, so sharded QLoRA is refused (DDP runs it)."""
    if args.fsdp and getattr(model, "is_loaded_in_4bit", False):
        raise TunesmithError(
            "fsdp=True with a 4-bit (QLoRA) model: sharded training covers bf16 LoRA only, and QLoRA runs "
            "data-parallel (DDP). Drop fsdp to train this 4-bit model on every GPU with DDP, or load the "
            "model without load_in_4bit to shard it with FSDP2."
        )


def _say_global_batch(args) -> None:
    """One line on the main process: how many rows each optimizer step sees, and from where."""
    mode = "FSDP2" if args.fsdp else "DDP" if world_size() > 1 else "one process"
    logger.warning(
        "global batch %d = %d per device x %d accumulation x %d process(es) (%s)",
        args.global_batch,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        world_size(),
        mode,
    )


def _apply_formatting(dataset, formatting_func, text_field: str):
    """Run the user's ``formatting_func`` (a string, or a one-item list as older TRL wanted) into
    ``text_field``."""
    if dataset is None:
        return None

    def one(row):
        text = formatting_func(row)
        if isinstance(text, list):
            if len(text) != 1:
                raise TunesmithError("formatting_func must return one string per row.")
            text = text[0]
        return {text_field: text}

    return dataset.map(one)


def _checkpoint_step(checkpoint: str | None) -> int | None:
    if checkpoint is None:
        return None
    state = Path(checkpoint) / TRAINER_STATE_NAME
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        return None


def _first_eval_loss(history: list[dict]) -> float | None:
    """The held-out loss the Trainer logged first (at step 0 with ``eval_on_start``), or None."""
    return next((h["eval_loss"] for h in history if "eval_loss" in h), None)
