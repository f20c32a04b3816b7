"""Subprocess for the resume tests: train a tiny Llama 8 steps (checkpoint every 4) with SFT or DPO, optionally
hang after a save."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback


class HangAfterSave(TrainerCallback):
    """Simulate a long run: after the first checkpoint, announce it and wait to be killed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_save(self, args, state, control, **kwargs):
        self.marker.write_text(str(state.global_step))
        time.sleep(600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--hang-after-save", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--method", choices=["sft", "dpo"], default="sft")
    options = parser.parse_args()
    if options.method == "dpo":
        return train_dpo(options)

    from tunesmith.data import builtin_dataset_path, load_dataset_file
    from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(options.model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(options.model_dir), r=8, random_state=3407)
    rows = load_dataset_file(builtin_dataset_path()).select(range(40))
    args = TrainingArguments(
        output_dir=options.output_dir,
        max_steps=8,
        save_steps=4,
        logging_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_steps=2,
        seed=3407,
        max_seq_length=96,
        optim="adamw_8bit",
        weight_decay=0.01,
    )
    callbacks = [HangAfterSave(Path(options.output_dir) / "saved.marker")] if options.hang_after_save else []
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if options.resume else None)


def train_dpo(options) -> None:
    """DPO on 40 of the shipped preference pairs, the same schedule as the SFT run."""
    from tunesmith.data import builtin_dataset_path, load_dataset_file
    from tunesmith.training import DPOConfig, DPOTrainer, get_peft_model

    tokenizer = AutoTokenizer.from_pretrained(options.model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(options.model_dir), r=8, random_state=3407)
    pairs = load_dataset_file(builtin_dataset_path("medquad_pref_en")).select(range(40))
    args = DPOConfig(
        output_dir=options.output_dir,
        max_steps=8,
        save_steps=4,
        logging_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        warmup_steps=2,
        seed=3407,
        max_length=96,
        optim="adamw_8bit",
        weight_decay=0.01,
    )
    callbacks = [HangAfterSave(Path(options.output_dir) / "saved.marker")] if options.hang_after_save else []
    trainer = DPOTrainer(
        model=model, tokenizer=tokenizer, train_dataset=pairs, args=args, callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=True if options.resume else None)


if __name__ == "__main__":
    main()
