"""Packing puts several rows in one sequence without letting attention cross from one row to the next."""

from __future__ import annotations

import datasets
import torch

from tunesmith.constants import IGNORE_INDEX
from tunesmith.training import SFTTrainer, TrainingArguments


def test_packed_rows_restart_positions_and_match_unpacked_logits(tiny, tmp_path):
    model, tokenizer = tiny
    rows = [
        {"text": t} for t in ["Fever is a high temperature.", "Rest helps.", "Drink water when ill, often."]
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        packing=True,
        max_seq_length=64,
        bf16=False,
        per_device_train_batch_size=1,
        max_steps=1,
        shuffle_dataset=False,
    )
    trainer = SFTTrainer(
        model=model, tokenizer=tokenizer, train_dataset=datasets.Dataset.from_list(rows), args=args
    )
    assert len(trainer.train_dataset) == 1  # all three rows in one packed sequence
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch
    singles = [tokenizer(r["text"] + tokenizer.eos_token, add_special_tokens=True)["input_ids"] for r in rows]
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0]
    assert len(starts) == 3
    model.eval()
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        for start, end in zip(starts, [*starts[1:], len(positions)], strict=True):
            ids = batch["input_ids"][0, start:end]
            assert ids.tolist() in singles
            alone = model(input_ids=ids[None], use_cache=False).logits[0]
            assert torch.allclose(packed[start:end], alone, atol=1e-4)  # no attention across row boundaries
    assert (
        batch["labels"][0, starts] == IGNORE_INDEX
    ).all()  # no row learns to predict the next row's first token
