"""tunesmith.training: LoRA adapters, training arguments, the SFT, DPO, ORPO and GRPO trainers, reward
functions, progress/log/plot, checkpoints, Ctrl-C handling."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "SFTConfig": "tunesmith.training.arguments",
        "TrainingArguments": "tunesmith.training.arguments",
        "SFTTrainer": "tunesmith.training.trainer",
        "DPOConfig": "tunesmith.training.method_arguments",
        "GRPOConfig": "tunesmith.training.method_arguments",
        "DPOTrainer": "tunesmith.training.preference",
        "ORPOConfig": "tunesmith.training.orpo",
        "ORPOTrainer": "tunesmith.training.orpo",
        "GRPOTrainer": "tunesmith.training.grpo",
        "format_reward": "tunesmith.training.rewards",
        "exact_match_reward": "tunesmith.training.rewards",
        "length_penalty": "tunesmith.training.rewards",
        "get_peft_model": "tunesmith.training.lora",
    },
)
