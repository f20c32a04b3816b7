"""The reference tutorial's SFTTrainer call, argument for argument, runs on this machine."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tunesmith import is_bfloat16_supported
from tunesmith.constants import IGNORE_INDEX
from tunesmith.models.registry import LLAMA_STYLE_TARGETS
from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

PROMPT = """Below is an instruction that describes a task. Write a response that appropriately completes the request.

### Question:
{}

### Response:
{}"""


def test_tutorial_call_runs_and_writes_log_and_plot(tiny, medquad_rows, tmp_path, capsys):
    model, tokenizer = tiny
    model = get_peft_model(
        model,
        r=16,
        target_modules=list(LLAMA_STYLE_TARGETS),  # the tutorial's seven projections
        lora_alpha=16,
        lora_dropout=0,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        use_rslora=False,
        loftq_config=None,
    )
    eos = tokenizer.eos_token
    dataset = medquad_rows.select(range(24)).map(
        lambda rows: {
            "text": [
                PROMPT.format(q, a) + eos for q, a in zip(rows["instruction"], rows["output"], strict=True)
            ]
        },
        batched=True,
    )
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=128,
        dataset_num_proc=2,
        packing=False,
        args=TrainingArguments(
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=1,
            max_steps=3,
            learning_rate=2e-4,
            fp16=not is_bfloat16_supported(),
            bf16=is_bfloat16_supported(),
            logging_steps=1,
            optim="adamw_8bit",
            weight_decay=0.01,
            lr_scheduler_type="linear",
            seed=3407,
            output_dir=str(tmp_path / "outputs"),
            report_to="none",
        ),
    )
    stats = trainer.data_stats
    assert (stats.rows, stats.layout) == (24, "text")
    assert all(
        text.count(eos) == 1 for text in trainer.train_dataset["text"]
    )  # the tutorial's EOS, not doubled
    trainer.train()
    # The model comes back at full precision: generation and export checks after training see fp32 logits.
    assert "_original_forward" not in model.__dict__
    probe = tokenizer("fatigue", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=probe).logits.dtype == torch.float32
    bar = capsys.readouterr().err
    assert re.search(r"3/3 \[[0-9:]+<[0-9:]+", bar)  # elapsed<remaining (ETA)
    assert "loss=" in bar and "lr=" in bar and "tok/s=" in bar
    optimizer = type(trainer.optimizer.optimizer)
    if trainer.args.use_cpu:  # bitsandbytes' 8-bit AdamW is slow on CPU: tunesmith uses torch's AdamW there
        assert optimizer is torch.optim.AdamW
    else:
        assert optimizer.__module__.startswith("bitsandbytes")
    log = [
        json.loads(line) for line in (tmp_path / "outputs" / "training_log.jsonl").read_text().splitlines()
    ]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all({"loss", "learning_rate", "num_tokens", "elapsed_s"} <= set(r) for r in steps)
    assert (tmp_path / "outputs" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert trainer.summary["steps"] == 3 and trainer.summary["final_loss"] == steps[-1]["loss"]


def test_trl_sftconfig_style_runs(tiny, tmp_path):
    import datasets
    import trl

    model, tokenizer = tiny
    rows = [{"prompt": f"Q{i}: how are you?\nA: ", "completion": f"Fine, number {i}."} for i in range(6)]
    config = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=64,
        logging_steps=1,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=get_peft_model(model, r=4),
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list(rows),
        args=config,
    )
    row = trainer.train_dataset[0]
    answer = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
    assert (
        tokenizer.decode(answer).strip().startswith("Fine, number")
    )  # prompt/completion: loss on the completion
    assert trainer.train().global_step == 2


def test_missing_tokenizer_is_a_clear_error(tiny, medquad_rows, tmp_path):
    from tunesmith.errors import TunesmithError

    model, _ = tiny
    with pytest.raises(TunesmithError, match="needs the tokenizer"):
        SFTTrainer(model=model, train_dataset=medquad_rows, args=TrainingArguments(output_dir=str(tmp_path)))
