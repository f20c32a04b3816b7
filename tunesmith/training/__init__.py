"""tunesmith.training: LoRA adapters, training arguments, the SFT trainer, progress/log/plot, checkpoints."""

from tunesmith.training.arguments import SFTConfig, TrainingArguments
from tunesmith.training.lora import get_peft_model
from tunesmith.training.trainer import SFTTrainer

__all__ = ["SFTConfig", "SFTTrainer", "TrainingArguments", "get_peft_model"]
