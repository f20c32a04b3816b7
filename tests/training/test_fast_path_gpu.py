"""On CUDA, ``FastLanguageModel.get_peft_model`` turns on the fused fast path by itself, and training
through it matches the plain transformers + peft path (loss within 0.5%, LoRA gradients within 2e-2)."""

from __future__ import annotations

import pytest
import torch
from _models import rel_err, write_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture
def tiny_llama_folder(tmp_path, chatml_bpe_tokenizer):
    return write_tiny_model(tmp_path, tokenizer=chatml_bpe_tokenizer, dtype=torch.bfloat16, hidden_size=512,
                            intermediate_size=1408, num_attention_heads=8, max_position_embeddings=2048)  # fmt: skip


def _one_step(path, fast_path: bool, qlora: bool):
    from tunesmith import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(str(path), dtype=torch.bfloat16, load_in_4bit=qlora)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, fast_path=fast_path,
                                             init_lora_weights="gaussian")  # fmt: skip
    patched = "_tunesmith_fast_path" in model.__dict__
    x = torch.randint(
        3, model.config.vocab_size, (2, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )
    model.train()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    return patched, loss.item(), grads


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_get_peft_model_turns_on_the_fast_path_and_matches_the_plain_path(tiny_llama_folder, qlora):
    path = tiny_llama_folder
    patched, loss, grads = _one_step(path, fast_path=True, qlora=qlora)
    plain, ref_loss, ref_grads = _one_step(path, fast_path=False, qlora=qlora)
    assert patched and not plain
    assert abs(loss - ref_loss) / ref_loss < 5e-3
    for name, ref in ref_grads.items():
        assert rel_err(grads[name], ref) < 2e-2, name


def test_memory_lean_setting_trains_through_the_trainer(tiny_llama_folder, tmp_path):
    """A GPU-memory cap with "unsloth" checkpointing: the trainer moves the model to the GPU, the input
    embedding stays in CPU memory, every layer's input goes there too, and training still learns."""
    from datasets import Dataset

    from tunesmith import FastLanguageModel
    from tunesmith.fast_path.offload import HostEmbedding
    from tunesmith.training import SFTTrainer, TrainingArguments

    model, tokenizer = FastLanguageModel.from_pretrained(str(tiny_llama_folder), dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, use_gradient_checkpointing="unsloth",
                                             max_memory_gb=0.01)  # fmt: skip
    rows = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                ]
            }  # fmt: skip
            for i in range(8)
        ]
    )
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12,
                             learning_rate=2e-3, warmup_steps=0, logging_steps=1, save_steps=1000, bf16=True,
                             seed=3407)  # fmt: skip
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, eval_dataset=rows, args=args)
    trainer.train()
    embed = model.get_base_model().model.embed_tokens
    assert isinstance(embed, HostEmbedding) and embed.weight.device.type == "cpu"
    assert model.__dict__["_tunesmith_fast_path"].checkpointing.last_plan.offload
    before, after = trainer.held_out_loss["before"], trainer.held_out_loss["after"]
    assert after < before - 0.2, (before, after)


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_padding_free_batches_give_the_padded_loss_and_gradients_on_the_fast_path(
    tiny_llama_folder, tmp_path, qlora
):
    """Rows of different lengths, flattened by the trainer's default collator, through the fused path:
    the same loss and LoRA gradients as the padded batch (the packed rows kept apart by their positions)."""
    from datasets import Dataset

    from tunesmith import FastLanguageModel
    from tunesmith.training import SFTTrainer, TrainingArguments

    model, tokenizer = FastLanguageModel.from_pretrained(
        str(tiny_llama_folder), dtype=torch.bfloat16, load_in_4bit=qlora
    )
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, init_lora_weights="gaussian")
    assert "_tunesmith_fast_path" in model.__dict__
    texts = ["Fever is a high temperature. " * n for n in (1, 9, 4, 15)]  # very different lengths
    rows = Dataset.from_list([{"text": t} for t in texts])
    results = []
    for padding_free in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path / str(padding_free)), per_device_train_batch_size=4,
                                 max_steps=1, bf16=True, shuffle_dataset=False, padding_free=padding_free)  # fmt: skip
        trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert ("attention_mask" in batch) is not padding_free
        model.zero_grad(set_to_none=True)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (flat_loss, flat_grads), (padded_loss, padded_grads) = results
    assert abs(flat_loss - padded_loss) / padded_loss < 5e-3
    for name, ref in padded_grads.items():
        assert rel_err(flat_grads[name], ref) < 2e-2, name
