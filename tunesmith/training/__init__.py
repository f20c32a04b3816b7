"""tunesmith.training: LoRA adapters, training arguments, the SFT trainer, progress/log/plot, checkpoints,
Ctrl-C handling."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SFTConfig": "tunesmith.training.arguments",
        "TrainingArguments": "tunesmith.training.arguments",
        "SFTTrainer": "tunesmith.training.trainer",
        "get_peft_model": "tunesmith.training.lora",
    },
)
