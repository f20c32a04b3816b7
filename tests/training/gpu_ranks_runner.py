"""Run under ``torchrun`` by test_multi_gpu_gpu.py: LoRA / QLoRA (DDP, fast path) or bf16 LoRA (FSDP2) on a
tiny Llama; each rank writes its trained adapter (full tensors) to ``rank-R.safetensors`` and how many base
weights it holds sharded; rank 0 saves the adapter with ``trainer.save_model``.

    torchrun --nproc-per-node N gpu_ranks_runner.py MODEL_DIR OUT ddp|qlora|fsdp
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    model_dir, output, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    import torch
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    from tunesmith.data import builtin_dataset_path, load_dataset_file
    from tunesmith.models.loader import load
    from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

    model, tokenizer = load(model_dir, dtype=torch.bfloat16, load_in_4bit=mode == "qlora", max_seq_length=128)
    model = get_peft_model(model, r=8, use_gradient_checkpointing="unsloth", fast_path=mode != "fsdp")
    args = TrainingArguments(
        output_dir=str(output),
        max_steps=3,
        save_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        global_batch_size=4 * int(os.environ.get("WORLD_SIZE", "1")),
        learning_rate=1e-3,
        warmup_steps=0,
        max_seq_length=128,
        fsdp=mode == "fsdp",
    )
    rows = load_dataset_file(builtin_dataset_path()).select(range(48))
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args, eval_split=0.1)
    trainer.train()
    sharded = sum(isinstance(p, DTensor) for p in trainer.model.parameters())
    lora = {
        n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu().contiguous()
        for n, p in trainer.model.named_parameters()
        if "lora_" in n
    }
    rank = os.environ.get("RANK", "0")
    save_file(lora, str(output / f"rank-{rank}.safetensors"))
    (output / f"rank-{rank}.json").write_text(
        json.dumps({"sharded": sharded, "fsdp": trainer.is_fsdp_enabled, "held_out": trainer.held_out_loss})
    )
    trainer.save_model(str(output / "adapter"))


if __name__ == "__main__":
    main()
