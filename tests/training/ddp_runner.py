"""Run under ``torchrun --nproc_per_node 2`` by test_ddp_api.py: the Python API as a user's train.py would use
it, with held-out loss before and after; each rank writes its trained adapter to ``rank-R.safetensors``."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    output = Path(sys.argv[1])
    from safetensors.torch import save_file

    from tunesmith.data import builtin_dataset_path, load_dataset_file
    from tunesmith.models.loader import load
    from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

    model, tokenizer = load("smollm2-135m-instruct", max_seq_length=64)
    model = get_peft_model(model, r=8, use_gradient_checkpointing=False)
    rows = load_dataset_file(builtin_dataset_path()).select(range(24))
    args = TrainingArguments(
        output_dir=str(output),
        max_steps=2,
        save_steps=100,
        logging_steps=1,
        per_device_train_batch_size=1,
        global_batch_size=4,
        learning_rate=1e-3,
        warmup_steps=0,
        bf16=False,
        optim="adamw_torch",
        max_seq_length=64,
    )
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args, eval_split=0.1)
    trainer.train()
    lora = {n: p.detach().contiguous() for n, p in model.named_parameters() if "lora_" in n}
    save_file(lora, str(output / f"rank-{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main()
