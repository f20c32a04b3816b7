"""Training on a CPU: the loss goes through tunesmith's fused head (no vocabulary-wide logits, prompt tokens
not scored) and packed rows attend sample by sample, with the losses TRL's own loss step gives."""

from __future__ import annotations

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunesmith.fast_path.patch import has_fused_loss, unpatch
from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

ROWS = [
    {"prompt": "What is anemia?", "completion": "A lack of healthy red blood cells to carry oxygen."},
    {"prompt": "How is fatigue treated?", "completion": "Rest, sleep and treating its cause."},
    {
        "prompt": "What lowers blood pressure?",
        "completion": "Less salt, exercise and, where needed, medicines.",
    },
    {"prompt": "Is a fever dangerous?", "completion": "See a doctor when it lasts more than three days."},
] * 2


def _losses(folder, tmp_path, fused: bool) -> tuple[list[float], dict]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), r=8, random_state=0)
    assert has_fused_loss(model)
    if not fused:
        unpatch(model)  # TRL's chunked head instead
    head = model.get_base_model().lm_head
    calls = {"head": 0, "full_logits": 0}
    if fused:
        head.register_forward_hook(lambda *_: calls.update(head=calls["head"] + 1))
        head.base_layer.register_forward_hook(lambda *_: calls.update(full_logits=calls["full_logits"] + 1))
    args = TrainingArguments(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        warmup_steps=0, logging_steps=1, shuffle_dataset=False, seed=0, save_strategy="no",
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, tokenizer=tokenizer, train_dataset=datasets.Dataset.from_list(ROWS), args=args
    )
    trainer.train()
    assert trainer.summary["train_tokens"] > 0  # the tokens/s the progress bar and report show
    return [r["loss"] for r in trainer.state.log_history if "loss" in r], calls


def test_cpu_training_scores_through_the_fused_head_with_trls_losses(tiny_llama_dir, tmp_path):
    fused, calls = _losses(tiny_llama_dir, tmp_path / "fused", fused=True)
    trl_head, _ = _losses(tiny_llama_dir, tmp_path / "trl", fused=False)
    # every step's forward went through the head, and none built its vocabulary-wide logits
    assert calls == {"head": 3, "full_logits": 0}
    assert len(fused) == 3 and fused[0] != fused[-1]
    assert max(abs(a - b) / b for a, b in zip(fused, trl_head, strict=True)) < 1e-4, (fused, trl_head)


def test_the_held_out_loss_goes_through_the_fused_head_with_trls_value(tiny_llama_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), r=8, random_state=0)
    placeholders = []  # what the fused head returned: a zero-stride placeholder, or real logits
    model.get_base_model().lm_head.register_forward_hook(
        lambda module, args, out: placeholders.append(out.stride(-1) == 0)
    )
    args = TrainingArguments(
        output_dir=str(tmp_path), bf16=False, per_device_eval_batch_size=3, max_steps=1, seed=0,
        save_strategy="no", held_out_eval=False,
    )  # fmt: skip
    rows = datasets.Dataset.from_list(ROWS)
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows, args=args)
    fused = trainer.evaluate()["eval_loss"]
    assert placeholders == [True] * 3  # three batches, none with vocabulary-wide logits
    unpatch(model)  # TRL's own evaluation step
    plain = trainer.evaluate()["eval_loss"]
    assert abs(fused - plain) / plain < 1e-5, (fused, plain)
