"""Training arguments that take the tutorial's settings as they are and pick device and precision themselves.

transformers' own ``TrainingArguments(bf16=True)`` raises on a machine without a GPU. Here ``fp16``/``bf16``
say "use half precision if you can": on a GPU, bf16 where supported, else fp16; on a CPU, bf16 autocast
where the CPU has native bf16, else fp32. ``optim="adamw_8bit"`` is bitsandbytes' 8-bit AdamW on a GPU;
on a CPU it becomes torch's AdamW (bitsandbytes' CPU step is much slower and saves no memory that matters).
``SFTConfig`` is the same class (it is TRL's ``SFTConfig`` underneath), so TRL's current argument names work
too; the tutorial's ``max_seq_length`` maps to ``max_length``.

Several processes (torchrun, ``accelerate launch``): the global batch is per device x accumulation x
processes; ``global_batch_size`` keeps it fixed when the number of processes changes (the accumulation is
derived). ``fsdp=True`` shards the model with FSDP2 through accelerate (GPUs only; QLoRA runs on DDP).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
import trl

from tunesmith._distributed import world_size
from tunesmith.errors import TunesmithError
from tunesmith.models.quantization import require_bitsandbytes

__all__ = [
    "TrainingArguments",
    "SFTConfig",
    "TunesmithArgumentsMixin",
    "as_tunesmith_arguments",
    "accumulation_for",
    "EIGHT_BIT_OPTIMIZERS",
]

logger = logging.getLogger(__name__)

EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "lion_8bit", "paged_lion_8bit")
# bitsandbytes' 8-bit AdamW runs on CPU but its step is about 10x slower than torch's AdamW there, and the
# memory it saves (optimizer state of the LoRA weights only) does not matter in CPU RAM.
_CPU_ADAMW = {"adamw_8bit": "adamw_torch", "adamw_bnb_8bit": "adamw_torch", "paged_adamw_8bit": "adamw_torch"}


def _cpu_has_bf16() -> bool:
    from tunesmith.models.device import cpu_has_bf16

    return cpu_has_bf16()


@dataclass
class TunesmithArgumentsMixin:
    """What every tunesmith trainer's arguments share, mixed in before one of TRL's configs.

    Differences from TRL: activation (gradient) checkpointing defaults to off (``get_peft_model`` turns it
    on), ``report_to`` defaults to "none" (nothing leaves the machine), ``fp16``/``bf16`` are requests
    resolved against the hardware (see :attr:`precision`), 8-bit optimizers fall back to torch's AdamW on CPU.
    """

    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of activation_checkpointing; get_peft_model sets it."},
    )
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Trackers; none by default."})
    held_out_eval: bool = field(
        default=True,
        metadata={"help": "With an eval set, measure held-out metrics before and after training."},
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per optimizer step over all processes; sets gradient_accumulation_steps to "
            "global / (per_device_train_batch_size x processes): fixed when the GPU count changes."
        },
    )

    def _resolve_for_machine(self) -> None:
        """Precision and optimizer for this machine; call before TRL's ``__post_init__``."""
        self._resolve_precision()
        self._check_optimizer()
        self._derive_accumulation()
        self._check_fsdp()

    def _derive_accumulation(self) -> None:
        """Set the accumulation that makes ``global_batch_size`` out of this run's processes."""
        if self.global_batch_size is not None:
            self.gradient_accumulation_steps = accumulation_for(
                self.global_batch_size, self.per_device_train_batch_size, world_size()
            )

    def _check_fsdp(self) -> None:
        """FSDP2 through accelerate: refuse where accelerate would quietly train without sharding."""
        if not self.fsdp:
            return
        if self.use_cpu:
            raise TunesmithError(
                "fsdp=True (sharded training) needs GPUs: accelerate shards with FSDP only on GPU-type "
                "devices "
                "and would train a CPU run unsharded. On CPU, train without fsdp (several processes still "
                "train data-parallel with DDP)."
            )
        if isinstance(self.fsdp_config, str):  # a JSON file: transformers reads it as it is
            return
        defaults = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}
        self.fsdp_config = {**defaults, **(self.fsdp_config or {})}  # FULL: the adapter gathers to rank 0

    @property
    def global_batch(self) -> int:
        """Rows per optimizer step over all processes: per device x accumulation x processes."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * world_size()

    def _resolve_precision(self) -> None:
        """Turn fp16/bf16 requests into what this machine can do (see the module docstring)."""
        wants_half = bool(self.fp16) or self.bf16 is None or bool(self.bf16)
        on_gpu = torch.cuda.is_available() and not self.use_cpu
        if on_gpu:
            bf16_ok = torch.cuda.is_bf16_supported()
            prefer_bf16 = self.bf16 is not False or not self.fp16
            self.bf16 = bool(wants_half and bf16_ok and prefer_bf16)
            self.fp16 = bool(wants_half and not self.bf16)
            return
        self.use_cpu = True
        asked_fp16 = bool(self.fp16)
        self.bf16 = bool(wants_half and _cpu_has_bf16())
        self.fp16 = False  # fp16 autocast on CPU is slow and unstable; bf16 or fp32 instead
        if asked_fp16:
            logger.info("fp16 requested on CPU: using %s instead.", "bf16 autocast" if self.bf16 else "fp32")

    def _check_optimizer(self) -> None:
        optim = str(getattr(self.optim, "value", self.optim))
        if self.use_cpu and optim in _CPU_ADAMW:
            logger.info("optim=%r on CPU: using %r (same AdamW, faster on CPU).", optim, _CPU_ADAMW[optim])
            self.optim = _CPU_ADAMW[optim]
            return
        if optim in EIGHT_BIT_OPTIMIZERS:
            require_bitsandbytes(f"optim='{optim}'", instead="use optim='adamw_torch'")

    @property
    def precision(self) -> str:
        """ "bf16", "fp16" or "fp32": what training actually uses."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass
class TrainingArguments(TunesmithArgumentsMixin, trl.SFTConfig):
    """``trl.SFTConfig`` with tunesmith's defaults, device/precision resolution and the tutorial's names
    (see :class:`TunesmithArgumentsMixin`)."""

    max_seq_length: int | None = field(
        default=None, metadata={"help": "The tutorial's name for max_length (longest training sequence)."}
    )
    on_too_long: str = field(
        default="truncate",
        metadata={"help": "Rows longer than max_length: 'truncate' (counted) or 'error' (refuse)."},
    )
    padding_free: bool | None = field(
        default=None,
        metadata={
            "help": "Put a batch's rows back to back in one row, without padding (positions restart per "
            "row, so no row sees another). None: on a CPU when the rows fit max_length, packing is off and "
            "no data_collator is given (on a GPU padded batches were faster)."
        },
    )

    def __post_init__(self):
        if self.max_seq_length is not None:
            self.max_length = self.max_seq_length
        self.max_seq_length = self.max_length
        if self.on_too_long not in ("truncate", "error"):
            raise TunesmithError(f"on_too_long={self.on_too_long!r}: use 'truncate' or 'error'.")
        self._resolve_for_machine()
        super().__post_init__()


SFTConfig = TrainingArguments


def accumulation_for(global_batch_size: int, per_device: int, processes: int) -> int:
    """The gradient accumulation that gives ``global_batch_size`` rows per step, or a clear error."""
    per_step = per_device * processes
    if global_batch_size < 1 or global_batch_size % per_step:
        raise TunesmithError(
            f"global_batch_size={global_batch_size} cannot be split over {processes} process(es) with "
            f"per_device_train_batch_size={per_device}: it must be a positive multiple of {per_device} x "
            f"{processes} = {per_step}. Change global_batch_size, per_device_train_batch_size or the number "
            "of GPUs."
        )
    return global_batch_size // per_step


def as_tunesmith_arguments(args, cls=None, **overrides):
    """Arguments of tunesmith's class ``cls`` (default :class:`TrainingArguments`) from None, one of ours,
    one of TRL's configs or transformers' ``TrainingArguments`` (the fields ``cls`` knows are kept).

    ``overrides`` (the tutorial's trainer-level arguments such as ``dataset_text_field``) win over ``args``;
    None values are ignored.
    """
    cls = cls or TrainingArguments
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args is None:
        return cls(output_dir=overrides.pop("output_dir", "outputs"), **overrides)
    if isinstance(args, cls) and not overrides:
        return args
    if isinstance(args, dict):
        values = dict(args)
    else:
        values = args.to_dict()
        for name in [k for k in values if k.endswith("_token")]:  # to_dict masks these as "<NAME>"
            values[name] = getattr(args, name, None)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in values.items() if k in known and not k.startswith("gradient_checkpointing")}
    if "max_length" in overrides:
        values.pop("max_seq_length", None)
    values.update(overrides)
    return cls(**values)
