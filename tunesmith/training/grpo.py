"""``GRPOTrainer``: TRL's GRPOTrainer with plain-function rewards, tunesmith's prompt formatting and the
shared loop of :mod:`tunesmith.training.base` (progress bar, ``training_log.jsonl``, ``loss.png`` and
``rewards.png``, atomic checkpoints, exact resume).

Prompts (a file, a ``datasets.Dataset`` or a list of dicts with a ``prompt`` column, text or messages) are
validated and formatted by :func:`tunesmith.data.preference.prepare_prompt_dataset` with the declared
prompt template or chat template, as SFT formats its prompts; the other columns reach the reward functions
by name. Rewards are functions or built-in names (:mod:`tunesmith.training.rewards`); each is called once on
the first rows before training, so a broken one fails at once, not after the first generation. Completions
come from tunesmith's decode loop (``generation.fast_generate``, bound as the model's ``generate`` while
training runs: a static KV cache, on a GPU the one-token step as a CUDA graph) with the LoRA adapters
unmerged (no second engine, no weight copy); the sampling settings TRL passes are read as transformers
would, and any it does not cover send the call to transformers' own ``generate``.
TRL logs the mean reward of every function and the completion lengths; ``samples.json`` keeps sample
completions with their rewards from the first and the last step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import trl

from tunesmith._atomic import atomic_file
from tunesmith.data.preference import ROW_COLUMN, prepare_prompt_dataset
from tunesmith.errors import TunesmithError
from tunesmith.generation.generate import disable_fast_generation, enable_fast_generation
from tunesmith.training.arguments import as_tunesmith_arguments
from tunesmith.training.base import TunesmithTrainerMixin
from tunesmith.training.lora import keep_4bit_trainable
from tunesmith.training.method_arguments import GRPOConfig
from tunesmith.training.plot import plot_metric_panels
from tunesmith.training.rewards import resolve_rewards

__all__ = ["GRPOTrainer", "SAMPLES_NAME", "REWARDS_PLOT"]

logger = logging.getLogger(__name__)

SAMPLES_NAME = "samples.json"
REWARDS_PLOT = "rewards.png"
_SAMPLES_KEPT = 4  # completions kept from each of the first and the last step


class _SampleKeeper:
    """Completions and their rewards from the first and the latest step (fed by the reward calls)."""

    def __init__(self) -> None:
        self.start: list[dict] = []
        self.end: list[dict] = []
        self._step: int | None = None

    def record(self, name: str, step: int, prompts, completions, rewards) -> None:
        """Keep the first completions of ``step`` with the rewards function ``name`` gave them."""
        if self._step != step:
            self._step = step
            self.end = [
                {"step": step, "prompt": str(p)[-300:], "completion": str(c), "rewards": {}}
                for p, c in list(zip(prompts, completions, strict=True))[:_SAMPLES_KEPT]
            ]
            if not self.start:
                self.start = self.end
        for sample, reward in zip(self.end, rewards, strict=False):
            sample["rewards"][name] = reward

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end}


def _recorded(func, keeper: _SampleKeeper):
    """``func`` that also hands its inputs and rewards to ``keeper``."""

    def reward(prompts, completions, **kwargs):
        values = func(prompts=prompts, completions=completions, **kwargs)
        state = kwargs.get("trainer_state")
        keeper.record(func.__name__, getattr(state, "global_step", 0) + 1, prompts, completions, values)
        return values

    reward.__name__ = func.__name__  # TRL logs rewards/<name>/mean
    return reward


class GRPOTrainer(TunesmithTrainerMixin, trl.GRPOTrainer):
    """TRL's ``GRPOTrainer`` with plain-function rewards and tunesmith's loop (see the module docstring).

    ``reward_funcs``: functions ``f(prompts, completions, **columns) -> list[float]`` and/or built-in names
    ``"format"``, ``"exact_match"`` (reads ``answer_column``), ``"length"``. Group size (``num_generations``),
    KL coefficient (``beta``), ``loss_type``, ``max_completion_length`` and ``temperature`` are TRL's options
    in ``args=GRPOConfig(...)``.
    """

    method = "grpo"

    def __init__(
        self,
        model=None,
        reward_funcs=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        tokenizer=None,
        template=None,
        fields: dict[str, str] | None = None,
        answer_column: str = "answer",
        **kwargs,
    ):
        if model is None:
            raise TunesmithError("GRPOTrainer needs model= (from FastLanguageModel.from_pretrained).")
        processing_class = processing_class if processing_class is not None else tokenizer
        if processing_class is None:
            raise TunesmithError("GRPOTrainer needs the tokenizer: tokenizer=tokenizer.")
        if train_dataset is None:
            raise TunesmithError("GRPOTrainer needs train_dataset= (rows with a 'prompt').")
        args = as_tunesmith_arguments(args, GRPOConfig)
        keep_4bit_trainable(model)
        self.data_stats = None
        if ROW_COLUMN not in getattr(train_dataset, "column_names", []):
            prepared = prepare_prompt_dataset(
                train_dataset, processing_class, template=template, fields=fields
            )
            train_dataset, self.data_stats = prepared.train, prepared.stats
        self.samples = _SampleKeeper()
        checked = resolve_rewards(reward_funcs, answer_column=answer_column)
        _try_rewards_on(checked, train_dataset)
        self._init_trl(
            args,
            kwargs,
            model=model,
            reward_funcs=[_recorded(f, self.samples) for f in checked],
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
        )
        self.summary: dict = {}

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and ROW_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, ROW_COLUMN]

    def _before_training(self, checkpoint: str | None) -> None:
        self._bound_generate = "generate" not in self.model.__dict__  # else the user's for_inference did
        enable_fast_generation(self.model)

    def _after_training(self) -> None:
        if self._bound_generate:
            disable_fast_generation(self.model)
        self._write_samples()

    def _write_samples(self) -> None:
        if not self.args.should_save:
            return
        path = Path(self.args.output_dir) / SAMPLES_NAME
        data = self.samples.to_dict()
        if self._jsonl.resumed_from and path.is_file():  # the first step's samples came from the first run
            data["start"] = json.loads(path.read_text(encoding="utf-8")).get("start", data["start"])
        with atomic_file(path, mode="w") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False)

    def plot_curves(self):
        """``loss.png`` and ``rewards.png`` (mean reward of each function, completion lengths)."""
        names = [f.__name__ for f in self.reward_funcs]
        panels = [
            ("reward", [("reward", "total"), *[(f"rewards/{n}/mean", n) for n in names]]),
            ("completion tokens", [("completions/mean_length", "mean length")]),
        ]
        drawn = [self.plot_loss(), self._safe_plot(plot_metric_panels, REWARDS_PLOT, panels=panels,
                                                   title="GRPO rewards")]  # fmt: skip
        return [path for path in drawn if path]

    def _summarize(self, output) -> dict:
        records = [r for r in self.records() if "reward" in r]
        window = max(1, len(records) // 4)
        first, last = records[:window], records[-window:]

        def mean(rows, key):
            return sum(r[key] for r in rows) / len(rows) if rows and key in rows[0] else None

        names = [f.__name__ for f in self.reward_funcs]
        return {
            **self.base_summary(output),
            "method": self.method,
            "reward_first": mean(first, "reward"),
            "reward_last": mean(last, "reward"),
            "rewards_first": {n: mean(first, f"rewards/{n}/mean") for n in names},
            "rewards_last": {n: mean(last, f"rewards/{n}/mean") for n in names},
            "completion_length_first": mean(first, "completions/mean_length"),
            "completion_length_last": mean(last, "completions/mean_length"),
            "samples_path": str(Path(self.args.output_dir) / SAMPLES_NAME),
            "rewards_plot_path": str(Path(self.args.output_dir) / REWARDS_PLOT),
            "data": self.data_stats.to_dict() if self.data_stats else None,
        }


def _try_rewards_on(rewards, dataset, rows: int = 8) -> None:
    """Call every reward once on the first ``rows`` rows with a well-formed completion, before any
    generation, so a broken function fails at once (naming itself and the row)."""
    batch = dataset[: min(rows, len(dataset))]
    n = len(batch["prompt"])
    columns = {k: v for k, v in batch.items() if k != "prompt"}
    completions = ["<think>\nA short thought.\n</think>\nThe answer is 1."] * n
    for reward in rewards:
        reward(prompts=batch["prompt"], completions=completions, completion_ids=[[0]] * n, trainer_state=None,
               log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None, **columns)  # fmt: skip
