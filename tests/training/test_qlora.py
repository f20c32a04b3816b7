"""QLoRA on CPU: LoRA on 4-bit (bitsandbytes NF4) weights of the embedded default model trains."""

from __future__ import annotations

from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model


def test_qlora_trains_on_cpu(default_model_path, medquad_rows, tmp_path):
    from tunesmith.models.loader import load

    model, tokenizer = load("smollm2-135m-instruct", max_seq_length=256, load_in_4bit=True)
    assert getattr(model, "is_loaded_in_4bit", False)
    model = get_peft_model(model, r=16, lora_alpha=16)
    rows = medquad_rows.select(range(8))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=8,
        learning_rate=1e-3,
        warmup_steps=0,
        logging_steps=1,
        max_seq_length=128,
        save_steps=1000,
        seed=3407,
    )
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows, args=args)
    trainer.train()
    before, after = trainer.held_out_loss["before"], trainer.held_out_loss["after"]
    assert after < before - 0.2, (before, after)  # the 4-bit base learned its 8 rows (no silent wrong grads)
    packed = [
        m
        for m in model.modules()
        if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
    ]
    assert not packed  # evaluation did not repack weights into bitsandbytes' inference-only layout
