"""What every tunesmith trainer adds to TRL's: progress bar, ``training_log.jsonl``, plots, atomic
checkpoints, exact resume, and the user's model handed back as it was.

Mixed in before a TRL trainer class (``class SFTTrainer(TunesmithTrainerMixin, trl.SFTTrainer)``). A trainer
prepares its data, then calls TRL's ``__init__`` through :meth:`_init_trl` (tunesmith's callbacks in,
transformers' progress printing out); :meth:`train` then runs the shared loop, with the hooks
:meth:`_before_training`, :meth:`_after_training`, :meth:`plot_curves` and :meth:`_summarize` for what
differs between methods.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_SAFE_WEIGHTS_NAME
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import TrainOutput

from tunesmith._distributed import world_size
from tunesmith.fast_path.cpu_autocast import cpu_autocast_training
from tunesmith.fast_path.packing import packed_attention
from tunesmith.generation.generate import forget_decoder
from tunesmith.training.attention import varying_length_attention
from tunesmith.training.callbacks import PLOT_NAME, JsonlLogCallback, ProgressBarCallback
from tunesmith.training.checkpoint import AtomicCheckpointMixin, find_checkpoint, remove_partial_checkpoints
from tunesmith.training.distributed import fault_injection
from tunesmith.training.no_telemetry import NoTelemetryMixin
from tunesmith.training.plot import plot_loss_curve, read_log

__all__ = ["TunesmithTrainerMixin", "checkpoint_step", "first_eval_loss", "global_batch_text"]

logger = logging.getLogger(__name__)


class TunesmithTrainerMixin(NoTelemetryMixin, AtomicCheckpointMixin):
    """The shared training loop around a TRL trainer (see the module docstring)."""

    _jsonl: JsonlLogCallback

    def _tunesmith_callbacks(self, output_dir: str, callbacks) -> list:
        """The user's callbacks plus tunesmith's progress bar and JSON-lines log (and, when switched on, the
        fault injection of multi-process tests)."""
        self._jsonl = JsonlLogCallback(output_dir)
        return [*(callbacks or []), ProgressBarCallback(), self._jsonl, *fault_injection()]

    def _drop_default_callbacks(self) -> None:
        """Remove transformers' own progress printing (replaced by :class:`ProgressBarCallback`)."""
        for default in (ProgressCallback, PrinterCallback):
            self.remove_callback(default)

    def _init_trl(self, args, kwargs: dict, **arguments) -> None:
        """The TRL trainer's ``__init__`` with ``arguments`` and the caller's other ``kwargs``: tunesmith's
        callbacks go in before it, transformers' progress printing comes out after (every trainer's tail)."""
        callbacks = self._tunesmith_callbacks(args.output_dir, kwargs.pop("callbacks", None))
        super().__init__(args=args, callbacks=callbacks, **arguments, **kwargs)
        self._drop_default_callbacks()

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train (resuming if asked) with the method's measurements before and after; writes the log and
        the plots, also when interrupted. Attention runs on kernels that need no plan per row length."""
        output_dir = Path(self.args.output_dir)
        if self.args.should_save:
            removed = remove_partial_checkpoints(output_dir)
            if removed:
                logger.warning("Removed %d half-written checkpoint folder(s) in %s.", removed, output_dir)
        checkpoint = find_checkpoint(resume_from_checkpoint, str(output_dir))
        if self.args.should_save:  # rank 0 alone writes the log
            self._jsonl.start(checkpoint_step(checkpoint))
            _say_global_batch(self.args)
        else:
            self._jsonl.resumed_from = checkpoint_step(checkpoint)
        forget_decoder(self.model)  # a static KV cache held from generating before would only take memory
        autocast = torch.bfloat16 if self.args.bf16 else None
        with (
            varying_length_attention(),
            packed_attention(self.model),
            cpu_autocast_training(self.model, autocast),
        ):
            self._before_training(checkpoint)
            self._wrap_after_evaluation()
            try:
                if self._finished_adapter(checkpoint) is not None:
                    output = self._restore_finished(checkpoint)
                else:
                    output = super().train(
                        resume_from_checkpoint=checkpoint,
                        trial=trial,
                        ignore_keys_for_eval=ignore_keys_for_eval,
                        **kwargs,
                    )
            except BaseException:
                self.plot_curves()  # the curves so far, on interruption too
                self._release_model()
                raise
            self._after_training()
        self.plot_curves()
        self.summary = self._summarize(output)
        self._release_model()
        return output

    def _restore_finished(self, checkpoint: str) -> TrainOutput:
        """The model and trainer state of a checkpoint saved at ``max_steps``, without a step.

        transformers (5.24) resumed from such a checkpoint runs one optimizer step past ``max_steps`` before
        it looks at the step count, so a re-run of a finished training would train on; the adapter weights
        are loaded through PEFT instead.
        """
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        weights = self._finished_adapter(checkpoint)
        set_peft_model_state_dict(self.model, load_file(weights, device=str(self.model.device)))
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
        losses = [r["loss"] for r in self.state.log_history if "loss" in r]
        logger.warning(
            "%s was saved at step %d of %d: training is complete, its adapter weights are loaded.",
            checkpoint,
            self.state.global_step,
            self.args.max_steps,
        )
        return TrainOutput(self.state.global_step, losses[-1] if losses else 0.0, {"train_runtime": 0.0})

    def _finished_adapter(self, checkpoint: str | None) -> Path | None:
        """The LoRA weights of ``checkpoint`` when it was saved at (or past) ``max_steps``; None otherwise
        (a model without adapters then resumes the transformers way)."""
        from peft import PeftModel

        step = checkpoint_step(checkpoint)
        if step is None or self.args.max_steps <= 0 or step < self.args.max_steps:
            return None
        weights = Path(checkpoint) / ADAPTER_SAFE_WEIGHTS_NAME
        return weights if isinstance(self.model, PeftModel) and weights.is_file() else None

    # -- hooks ------------------------------------------------------------------------------------------
    def _before_training(self, checkpoint: str | None) -> None:
        """Measure what the method compares before and after (nothing by default)."""

    def _after_training(self) -> None:
        """Measure it again after training (nothing by default)."""

    def plot_curves(self) -> list[Path]:
        """Write the method's plots into the output folder; returns the paths written."""
        loss = self.plot_loss()
        return [loss] if loss else []

    def _summarize(self, output) -> dict:
        """The numbers a run report shows (:meth:`base_summary`; methods add theirs)."""
        return self.base_summary(output)

    # -- shared pieces ----------------------------------------------------------------------------------
    def _wrap_after_evaluation(self) -> None:
        """Let training wrap the model in DDP although it was evaluated first (held-out measures before).

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

    def records(self) -> list[dict]:
        """The records of this run's ``training_log.jsonl``."""
        return read_log(self._jsonl.path)

    def plot_loss(self) -> Path | None:
        """Write ``loss.png`` in the output folder from the training log; returns its path."""
        return self._safe_plot(plot_loss_curve, PLOT_NAME)

    def _safe_plot(self, draw, name: str, **options) -> Path | None:
        """``draw(records, path, **options)`` into the output folder; a failure is a warning only."""
        if not self.args.should_save:
            return None
        try:
            return draw(self.records(), Path(self.args.output_dir) / name, **options)
        except Exception as err:  # a plot must never hide the real outcome of training
            logger.warning("Could not draw %s: %s", name, err)
            return None

    def base_summary(self, output) -> dict:
        """Steps, time, throughput, final loss, precision, device and the log/plot paths."""
        losses = [r["loss"] for r in self.records() if "loss" in r]
        runtime = output.metrics.get("train_runtime") or 0.0
        steps_run = max(1, self.state.global_step - (self._jsonl.resumed_from or 0))
        tokens = getattr(self, "_total_train_tokens", 0) or self.state.num_input_tokens_seen
        return {
            "steps": self.state.global_step,
            "train_seconds": runtime,
            "seconds_per_step": runtime / steps_run,
            "train_tokens": tokens,
            "tokens_per_second": tokens / runtime if runtime and tokens else None,
            "final_loss": losses[-1] if losses else None,
            "precision": self.args.precision,
            "global_batch": self.args.global_batch,
            "processes": world_size(),
            "device": str(self.args.device),
            "log_path": str(self._jsonl.path),
            "plot_path": str(Path(self.args.output_dir) / PLOT_NAME),
        }


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The global step a checkpoint folder was saved at (None for no checkpoint or an unreadable one)."""
    if checkpoint is None:
        return None
    state = Path(checkpoint) / TRAINER_STATE_NAME
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        return None


def first_eval_loss(history: list[dict]) -> float | None:
    """The held-out loss the Trainer logged first (at step 0 with ``eval_on_start``), or None."""
    return next((h["eval_loss"] for h in history if "eval_loss" in h), None)


def global_batch_text(args) -> str:
    """How many rows each optimizer step sees, and from where: ``global batch 8 = 2 per device x 4
    accumulation x 1 process(es) (one process)``."""
    mode = "FSDP2" if args.fsdp else "DDP" if world_size() > 1 else "one process"
    return (
        f"global batch {args.global_batch} = {args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {world_size()} process(es) ({mode})"
    )


def _say_global_batch(args) -> None:
    """One line on the main process (the log and the report say the same)."""
    logger.warning("%s", global_batch_text(args))
