"""``SFTTrainer``: TRL's SFTTrainer with the tutorial's arguments, tunesmith's data checks, progress, logs
and plots.

Accepts both TRL's current style (``args=SFTConfig(...)``, ``processing_class=``) and the older style the
tutorial uses (``tokenizer=``, ``dataset_text_field=``, ``max_seq_length=``, ``dataset_num_proc=``,
``packing=``, ``args=TrainingArguments(...)``). Raw data sets are validated, formatted and tokenized by
:mod:`tunesmith.data` before the first step (rows, tokens, truncations and duplicates land in
``trainer.data_stats``). Texts formatted by the user, with their source columns kept beside them, declare
the prompt template they follow on the tokenizer (:mod:`tunesmith.data.text_template`). Training writes
``training_log.jsonl`` and ``loss.png`` into the output folder, checkpoints atomically, and with an eval set
measures held-out loss before and after (``trainer.summary``). A batch's rows go back to back without
padding where that is exact (``padding_free``, on by default on a CPU, where it is faster).
"""

from __future__ import annotations

import logging

import torch
import transformers
import trl

from tunesmith.data.prepare import prepare_dataset
from tunesmith.data.stats import DataStats
from tunesmith.data.text_template import COLUMN_PLACEHOLDERS, adopt_text_template
from tunesmith.errors import TunesmithError
from tunesmith.fast_path.patch import fused_loss_only, has_fused_loss
from tunesmith.training.arguments import as_tunesmith_arguments
from tunesmith.training.base import TunesmithTrainerMixin, first_eval_loss
from tunesmith.training.lora import keep_4bit_trainable

__all__ = ["SFTTrainer"]

logger = logging.getLogger(__name__)

# Below this many rows, spreading dataset preparation over processes costs more than it saves.
_MULTIPROCESS_MIN_ROWS = 5000
_UNLIMITED = 10**9


class SFTTrainer(TunesmithTrainerMixin, trl.SFTTrainer):
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
        keep_4bit_trainable(model)
        _refuse_sharded_4bit(model, args)
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
        args.padding_free = _padding_free(args, data_collator, (train_dataset, eval_dataset))
        if args.padding_free:
            args.max_length = None  # the rows are cut already; TRL refuses a length it would not enforce
        self._init_trl(
            args,
            kwargs,
            model=model,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
        )
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
            "max_seq_length": args.max_seq_length or _UNLIMITED,
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

    # -- the loss ---------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """A training step's loss through the model's own forward where tunesmith's fused head is on it
        (the gradient computed with the loss: two products with the output weight where TRL's chunked head,
        which recomputes its logits in backward, takes three; prompt tokens not scored at all); TRL's loss
        everywhere else (custom losses, label smoothing, mixture-of-experts auxiliary loss). Evaluation:
        ``prediction_step``."""
        if not self._fused_loss_applies(model, return_outputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs["use_cache"] = False
        loss = transformers.Trainer.compute_loss(self, model, inputs, num_items_in_batch=num_items_in_batch)
        self._count_train_tokens(inputs)
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """An evaluation step that asks for the loss alone (``trainer.evaluate()`` without metrics: the
        held-out loss) scores it through tunesmith's fused head where that is on the model: no
        vocabulary-wide logits (4 GiB for 2 x 2,048 tokens of Gemma's 262k vocabulary, where training keeps
        one chunk), and none of TRL's per-token entropy and accuracy over them. TRL's step otherwise."""
        if not prediction_loss_only or "labels" not in inputs or not self._fused_loss_possible(model):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        inputs = self._prepare_inputs(inputs)
        inputs["use_cache"] = False
        with torch.no_grad(), self.compute_loss_context_manager():
            with fused_loss_only(self.accelerator.unwrap_model(model)):
                loss = transformers.Trainer.compute_loss(self, model, inputs)  # the batch's mean
        return loss.detach().mean(), None, None

    def _fused_loss_applies(self, model, return_outputs: bool) -> bool:
        return model.training and not return_outputs and self._fused_loss_possible(model)

    def _fused_loss_possible(self, model) -> bool:
        """Whether the model's loss can go through tunesmith's fused head: it is there, and nothing asks for
        another loss (a custom one, label smoothing, an auxiliary loss, sequence parallelism)."""
        parallelism = getattr(self.accelerator, "parallelism_config", None)
        return (
            self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and not (parallelism is not None and getattr(parallelism, "sp_enabled", False))
            and has_fused_loss(self.accelerator.unwrap_model(model))
        )

    def _count_train_tokens(self, inputs) -> None:
        """The ``num_tokens`` metric TRL's own loss step keeps (the progress bar's tokens/s reads it)."""
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:  # without padding the batch is one row of real tokens
            local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
        self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item() // self._tp_size
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]

    # -- the method's measurements (tunesmith.training.base runs the loop) -------------------------------
    def _after_training(self) -> None:
        if self.eval_dataset is not None and self.args.held_out_eval:
            if self.held_out_loss["before"] is None:  # FSDP2: measured by the Trainer at step 0
                self.held_out_loss["before"] = first_eval_loss(self.state.log_history)
            self.held_out_loss["after"] = self.evaluate().get("eval_loss")

    def _before_training(self, checkpoint: str | None) -> None:
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
        for record in self.records():  # measured by the run that wrote the checkpoint
            if record.get("step") == 0 and "eval_loss" in record:
                self.held_out_loss["before"] = record["eval_loss"]
                return

    def _summarize(self, output) -> dict:
        """The numbers a run report shows."""
        return {
            **self.base_summary(output),
            "eval_loss_before": self.held_out_loss["before"],
            "eval_loss_after": self.held_out_loss["after"],
            "data": self.data_stats.to_dict() if self.data_stats else None,
        }


def _padding_free(args, data_collator, datasets) -> bool:
    """Whether batches go without padding: as asked, or by default on a CPU where it is exact and TRL's
    collator runs (no packing, no collator of the user's) on rows no longer than ``max_length``.

    A flattened batch does the loss of a padded one without the padding: transformers and the fast path
    keep the rows apart by their restarting positions, and TRL trains without a KV cache, the one case in
    which transformers would not (tests/training/test_padding_free.py). It pays where arithmetic bounds the
    step: 4% on a CPU, while on an H200 the tutorial's step was 10% slower than padded (run 14, when both
    went through SDPA's math kernel; a right-padded batch now takes the mask-free flash kernel, and a packed
    row the memory-efficient one with its block mask; bench/NOTES.md).
    """
    asked = args.padding_free
    default_off = args.packing or data_collator is not None or not args.use_cpu
    if asked is False or (asked is None and default_off):
        return False
    limit = args.max_length or _UNLIMITED
    for dataset in (d for d in datasets if d is not None):
        longest = _longest_row(dataset)
        if longest is not None and longest <= limit:
            continue
        if asked:
            found = f"rows of up to {longest} tokens" if longest is not None else "rows of unknown length"
            raise TunesmithError(
                f"padding_free=True needs every row cut to max_length={args.max_length} tokens, and this "
                f"tokenized data set has {found}. Pass raw rows (SFTTrainer cuts them), cut the rows "
                "yourself, or set padding_free=False."
            )
        return False
    return True


def _longest_row(dataset) -> int | None:
    """The longest ``input_ids`` in ``dataset``'s Arrow table (over the whole table: a selection of it is
    no longer), or None where there is no table (a streamed data set)."""
    import pyarrow.compute as pc

    table = getattr(dataset, "data", None)
    if table is None or "input_ids" not in table.column_names:
        return None
    return pc.max(pc.list_value_length(table.column("input_ids"))).as_py() or 0


def _refuse_sharded_4bit(model, args) -> None:
    """QLoRA under FSDP2 would need bitsandbytes' 4-bit storage sharded as the compute dtype; tunesmith's
    4-bit weights are stored as uint8 for the fused kernels, so sharded QLoRA is refused (DDP runs it)."""
    if args.fsdp and getattr(model, "is_loaded_in_4bit", False):
        raise TunesmithError(
            "fsdp=True with a 4-bit (QLoRA) model: sharded training covers bf16 LoRA only, and QLoRA runs "
            "data-parallel (DDP). Drop fsdp to train this 4-bit model on every GPU with DDP, or load the "
            "model without load_in_4bit to shard it with FSDP2."
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
