"""Batches without padding: a batch's rows back to back in one row, by default where it is exact, with the
same loss as the padded batch; and attention on kernels that need no plan per row length."""

from __future__ import annotations

import datasets
import pytest
import torch
from _models import tiny_model
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from tunesmith.errors import TunesmithError
from tunesmith.models.registry import FAMILIES
from tunesmith.training import SFTTrainer, TrainingArguments

ROWS = [
    "Anemia is a condition in which the blood lacks enough healthy red cells to carry oxygen.",
    "Rest helps.",
    "High blood pressure is treated with less salt, exercise and, where needed, medicines.",
    "Fatigue has many causes, from poor sleep to thyroid disease.",
]


def _trainer(model, tokenizer, tmp_path, **options):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_seq_length=64, bf16=False, per_device_train_batch_size=4, max_steps=1,
        shuffle_dataset=False, seed=0, **options,
    )  # fmt: skip
    rows = datasets.Dataset.from_list([{"text": t} for t in ROWS])
    return SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args)


def _first_batch(trainer) -> dict:
    loader = trainer.get_train_dataloader()
    return next(iter(loader))


def test_rows_go_back_to_back_by_default_with_the_padded_loss(tiny, tmp_path):
    model, tokenizer = tiny
    assert model.config.use_cache  # the case transformers would mix rows in, had TRL not trained without it
    flat = _trainer(model, tokenizer, tmp_path / "flat")
    padded = _trainer(model, tokenizer, tmp_path / "padded", padding_free=False)
    assert flat.args.padding_free and not padded.args.padding_free
    flat_batch, padded_batch = _first_batch(flat), _first_batch(padded)
    real_tokens = int(padded_batch["attention_mask"].sum())
    assert padded_batch["input_ids"].numel() > real_tokens  # the padded batch carries padding
    assert flat_batch["input_ids"].shape == (1, real_tokens)  # the flat one carries none
    assert "attention_mask" not in flat_batch
    assert int((flat_batch["position_ids"] == 0).sum()) == len(ROWS)  # positions restart per row
    model.train()
    losses = [t.compute_loss(model, dict(b)) for t, b in ((flat, flat_batch), (padded, padded_batch))]
    assert torch.allclose(losses[0], losses[1], rtol=1e-5), losses


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if f != "gemma3"))  # gemma3: its text model
def test_every_family_keeps_flattened_rows_apart(family):
    model = tiny_model(family).train()
    generator = torch.Generator().manual_seed(0)
    # Longer than Gemma's tiny sliding window (16), so windowed layers see row boundaries too.
    rows = [{"input_ids": torch.randint(3, 256, (n,), generator=generator).tolist()} for n in (40, 7, 25)]
    losses = []
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(rows)
        losses.append(model(**batch, use_cache=False).loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5), (family, losses)


def test_tokenized_rows_longer_than_max_length_stay_padded_or_are_refused(tiny, tmp_path):
    model, tokenizer = tiny
    long_row = {"input_ids": list(range(10, 110)), "labels": list(range(10, 110))}
    rows = datasets.Dataset.from_list([long_row, long_row])
    args = dict(output_dir=str(tmp_path), max_seq_length=64, bf16=False, max_steps=1)
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=TrainingArguments(**args))
    assert not trainer.args.padding_free  # TRL cuts these rows; flattened it could not
    with pytest.raises(TunesmithError, match=r"padding_free=True needs every row cut to max_length=64.*100"):
        SFTTrainer(
            model=model, tokenizer=tokenizer, train_dataset=rows,
            args=TrainingArguments(**args, padding_free=True),
        )  # fmt: skip


def test_training_attention_leaves_out_cudnn_and_gives_it_back(tiny, tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(torch.backends.cuda.cudnn_sdp_enabled())

    model, tokenizer = tiny
    trainer = _trainer(model, tokenizer, tmp_path)
    trainer.add_callback(Record())
    before = torch.backends.cuda.cudnn_sdp_enabled()
    trainer.train()
    assert seen == [False]  # cuDNN builds a plan per new row length: not used while training
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
