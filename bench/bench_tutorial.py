"""The tutorial's own training run, timed step by step: tunesmith against Unsloth on real rows.

The fixed-shape loop of ``bench.py`` measures kernels; this measures what a user runs. Each variant, in
its own process, makes the reference tutorial's calls (only the import differs):
``FastLanguageModel.from_pretrained(load_in_4bit=True, max_seq_length=2048)``, ``get_peft_model(r=16,
all seven projections, use_gradient_checkpointing="unsloth")``, then ``SFTTrainer`` with batch 2,
accumulation 4, ``adamw_8bit``, bf16, ``packing=False``, on the shipped MedQuAD rows in a reasoning
prompt (rows of varying length, padded per batch) with the real Llama-3.1 tokenizer.

usage (GPU machine, from the repository root, anchors on PYTHONPATH as in run_all.sh):
    python3 bench/bench_tutorial.py prep MODEL_DIR TOKENIZER_DIR OUT_DIR   # weights + real tokenizer
    python3 bench/bench_tutorial.py run OUT_DIR ts|unsloth STEPS
Prints one ``RESULT {json}`` line: every step's seconds, trainer.train() wall time, tokens seen, peak GiB.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "tunesmith" / "assets" / "data" / "medquad_en.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context.
Write a response that appropriately completes the request.
Before answering, think carefully about the question and create a step-by-step chain of thoughts.

### Instruction:
You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment planning.
Please answer the following medical question.

### Question:
{}

### Response:
<think>
{}
</think>
{}"""


def prep(model_dir: str, tokenizer_dir: str, out_dir: str) -> None:
    """A model folder with ``model_dir``'s weights (linked) and the real tokenizer of ``tokenizer_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if (
            f.suffix in (".safetensors", ".json")
            and "tokenizer" not in f.name
            and f.name != "special_tokens_map.json"
        ):
            target = out / f.name
            if not target.exists():
                os.symlink(f.resolve(), target) if f.suffix == ".safetensors" else shutil.copy(f, target)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    tok = json.loads((out / "tokenizer_config.json").read_text())
    config["bos_token_id"], config["eos_token_id"] = 128000, 128001  # the real tokenizer's ids
    config.pop("pad_token_id", None)
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps(config))
    print(json.dumps({"prepared": str(out), "tokenizer_class": tok.get("tokenizer_class")}), flush=True)


def rows(eos: str, n: int = 200) -> list[dict]:
    """The first ``n`` shipped MedQuAD rows in the tutorial's reasoning prompt, EOS appended."""
    out = []
    with ROWS.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            answer = row["output"]
            thought = answer.split(". ")[0]
            out.append({"text": PROMPT.format(row["instruction"], thought, answer) + eos})
            if len(out) == n:
                break
    return out


def run(model_dir: str, variant: str, steps: int) -> None:
    """Time the tutorial's calls for ``variant`` (``ts`` or ``unsloth``) and print the RESULT line."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    if variant == "unsloth":
        from trl import SFTConfig, SFTTrainer
        from unsloth import FastLanguageModel
    else:
        from tunesmith import FastLanguageModel, SFTTrainer, TrainingArguments

    cuda = torch.cuda.is_available()  # False only for a smoke test of the script on a CPU

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    four_bit = os.environ.get("BENCH_4BIT", "1") == "1"
    t0 = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_dir, max_seq_length=2048, load_in_4bit=four_bit
    )
    model = FastLanguageModel.get_peft_model(
        model, r=16, target_modules=TARGETS, lora_alpha=16, lora_dropout=0, bias="none",
        use_gradient_checkpointing="unsloth", random_state=3407,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    dataset = Dataset.from_list(rows(tokenizer.eos_token))
    common = dict(
        per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=5, max_steps=steps,
        learning_rate=2e-4, bf16=True, logging_steps=1, optim="adamw_8bit" if cuda else "adamw_torch", weight_decay=0.01,
        lr_scheduler_type="linear", seed=3407, output_dir=f"/tmp/tutorial-{variant}", report_to="none",
        save_strategy="no", include_num_input_tokens_seen=True,
    )  # fmt: skip

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(round(time.perf_counter() - self.start, 3))

    timer = StepTimes()
    if variant == "unsloth":
        args = SFTConfig(dataset_text_field="text", max_length=2048, packing=False, **common)
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)
    else:  # the tutorial's own argument names
        trainer = SFTTrainer(
            model=model, tokenizer=tokenizer, train_dataset=dataset, dataset_text_field="text",
            max_seq_length=2048, packing=False, args=TrainingArguments(**common),
        )  # fmt: skip
    trainer.add_callback(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    tokens = int(trainer.state.num_input_tokens_seen)
    result = dict(
        variant=variant, steps=steps, load_s=round(load_s, 1), train_s=round(train_s, 1),
        step_s=timer.times, step_s_median=statistics.median(timer.times), tokens_seen=tokens,
        tok_per_s_train=round(tokens / train_s), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        gpu=torch.cuda.get_device_name(0) if cuda else "cpu",
    )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "prep":
        prep(*sys.argv[2:5])
    else:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
