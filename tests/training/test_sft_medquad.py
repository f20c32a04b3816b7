"""The headline check: 30 LoRA steps on 200 medical rows lower the held-out loss of the embedded default model."""

from __future__ import annotations

import json

from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model


def test_thirty_lora_steps_lower_held_out_loss(smollm, medquad_rows, tmp_path):
    model, tokenizer = smollm
    # Checkpointing trades compute for memory; a 135M model needs no memory saving, and CI time is short.
    model = get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, random_state=3407, use_gradient_checkpointing=False
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        warmup_steps=3,
        max_steps=30,
        learning_rate=3e-4,
        logging_steps=1,
        optim="adamw_8bit",
        weight_decay=0.01,
        lr_scheduler_type="linear",
        seed=3407,
        max_seq_length=256,
        save_steps=1000,
        per_device_eval_batch_size=4,
    )
    trainer = SFTTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=medquad_rows.select(range(200)),
        eval_split=0.1,
        args=args,
    )
    assert (trainer.data_stats.rows, trainer.data_stats.eval_rows) == (180, 20)
    trainer.train()
    summary = trainer.summary
    before, after = summary["eval_loss_before"], summary["eval_loss_after"]
    print(
        f"\nheld-out loss {before:.4f} -> {after:.4f}; {summary['seconds_per_step']:.2f} s/step "
        f"({summary['precision']}, {summary['device']})"
    )
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
    assert after < before - 0.05, (before, after)
    log = [json.loads(line) for line in (tmp_path / "out" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 31))
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
