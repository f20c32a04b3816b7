"""``FastLanguageModel``: the tutorial's calls work, mistakes in keywords are caught."""

from __future__ import annotations

import pytest
import torch

from tunesmith.api.fast_language_model import FastLanguageModel
from tunesmith.errors import TunesmithError


def test_from_pretrained_returns_model_and_tokenizer(tiny_llama_dir):
    model, tokenizer = FastLanguageModel.from_pretrained(tiny_llama_dir, max_seq_length=256, dtype=None)
    assert model.max_seq_length == 256
    assert tokenizer.pad_token is not None and tokenizer.pad_token != tokenizer.eos_token
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_loaded_model_has_the_export_methods(tiny_llama_dir):
    model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir)
    assert callable(model.save_pretrained_gguf) and callable(model.save_pretrained_merged)


def test_misspelt_keyword_gets_a_suggestion(tiny_llama_dir):
    with pytest.raises(TunesmithError, match="'load_in4bit'.*Did you mean load_in_4bit"):
        FastLanguageModel.from_pretrained(tiny_llama_dir, load_in4bit=True)


def test_other_tools_keywords_warn_and_load(tiny_llama_dir):
    with pytest.warns(UserWarning, match="fast_inference"):
        model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir, fast_inference=True)
    assert model is not None


def test_full_finetuning_makes_every_weight_trainable(tiny_llama_dir):
    model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir, full_finetuning=True)
    assert all(p.requires_grad for p in model.parameters())


def test_lora_then_switch_between_training_and_inference(tiny_llama_dir):
    model, tokenizer = FastLanguageModel.from_pretrained(tiny_llama_dir)
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    FastLanguageModel.for_training(model)
    assert model.training and model.base_model.model.config.use_cache is False
    base = model.base_model.model
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    ids = tokenizer("a short training text", return_tensors="pt").input_ids
    model(input_ids=ids, labels=ids).loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n
    )

    FastLanguageModel.for_inference(model)
    assert not model.training and model.generation_config.use_cache
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3
