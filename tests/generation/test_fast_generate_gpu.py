"""The fast decode path on a CUDA GPU: the one-token step replays as a CUDA graph, greedy answers equal
transformers' (bf16) and transformers + bitsandbytes' (NF4) up to a near-tie, LoRA stays unmerged, and
training after generating sees the same weights the graph reads."""

from __future__ import annotations

import pytest
import torch
from _models import greedy_divergence, write_tiny_model

from tunesmith import FastLanguageModel
from tunesmith.generation.chat import answer_all, chat
from tunesmith.generation.generate import last_generation, library_generate

pytestmark = pytest.mark.gpu
NEAR_TIE = 0.05  # logit standard deviations, or a few bf16 roundings of the top logit, whichever is larger


@pytest.fixture(scope="module")
def folder(tmp_path_factory, chatml_bpe_tokenizer):
    return write_tiny_model(
        tmp_path_factory.mktemp("gen-gpu"), tokenizer=chatml_bpe_tokenizer, hidden_size=256,
        intermediate_size=512, num_hidden_layers=4, max_position_embeddings=1024,
    )  # fmt: skip


def _assert_greedy_agrees(model, ids, ours, theirs):
    parted = greedy_divergence(model, ids, ours[0, ids.shape[1] :], theirs[0, ids.shape[1] :])
    assert parted is None or abs(parted[1]) <= NEAR_TIE, (
        f"parted at new token {parted[0]} by {parted[1]:.3f} sd"
    )


@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["bf16", "nf4"])
def test_greedy_128_tokens_through_a_cuda_graph_agree_with_transformers(folder, load_in_4bit):
    model, tokenizer = FastLanguageModel.from_pretrained(folder, load_in_4bit=load_in_4bit)
    FastLanguageModel.for_inference(model)
    ids = tokenizer("The patient reported fatigue", return_tensors="pt").input_ids.cuda()
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128, min_new_tokens=128)
    ours = model.generate(**call)
    record = last_generation(model)
    assert record.path == "cuda-graph", record.why
    theirs = library_generate(model, **call, do_sample=False)
    _assert_greedy_agrees(model, ids, ours, theirs)
    again = model.generate(**call)
    assert torch.equal(again, ours), "a replayed graph gives the same answer again"


def test_lora_unmerged_in_the_graph_and_training_afterwards_changes_the_answer(folder):
    model, tokenizer = FastLanguageModel.from_pretrained(folder, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16)
    FastLanguageModel.for_inference(model)
    ids = tokenizer("Rest, fluids and", return_tensors="pt").input_ids.cuda()
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, min_new_tokens=32)
    before = model.generate(**call)
    assert last_generation(model).path == "cuda-graph", last_generation(model).why
    FastLanguageModel.for_training(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = torch.randint(0, 100, (2, 32), device="cuda")
    for _ in range(3):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    FastLanguageModel.for_inference(model)
    after = model.generate(**call)
    assert last_generation(model).path == "cuda-graph"
    _assert_greedy_agrees(model, ids, after, library_generate(model, **call, do_sample=False))
    assert not torch.equal(after, before), "three LoRA steps at lr 1e-2 change a random model's greedy answer"


def test_a_batch_of_probes_on_the_gpu_equals_each_probe_alone(folder):
    model, tokenizer = FastLanguageModel.from_pretrained(folder)
    questions = ["fatigue", "Ask a doctor when a fever lasts", "balanced diet"]
    together = answer_all(model, tokenizer, questions, max_new_tokens=16)
    assert last_generation(model).path == "cuda-graph"
    alone = [chat(model, tokenizer, q, max_new_tokens=16, stream=False) for q in questions]
    assert (
        sum(a == b for a, b in zip(together, alone, strict=True)) >= 2
    )  # bf16 padding may move one near-tie


def _greedy_call(tokenizer, text: str, new: int = 48) -> dict:
    ids = tokenizer(text, return_tensors="pt").input_ids.cuda()
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new)


def test_the_graph_records_the_decode_modules_with_lora_on_a_batch(folder, monkeypatch):
    from tunesmith.generation.decode_modules import DecodeAttention, DecodeMLP

    recorded = []
    for cls in (DecodeAttention, DecodeMLP):
        forward = cls.forward
        monkeypatch.setattr(
            cls, "forward", lambda self, *a, _f=forward, **k: recorded.append(1) or _f(self, *a, **k)
        )
    model, tokenizer = FastLanguageModel.from_pretrained(folder)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16)
    with torch.no_grad():  # adapters that change the answer, as after training
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    FastLanguageModel.for_inference(model)
    prompts = [
        tokenizer(t).input_ids for t in ("Rest, fluids and", "The patient reported fatigue and a fever that")
    ]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.eos_token_id] * (width - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device="cuda"
    )  # left padding
    call = dict(input_ids=ids, attention_mask=mask, max_new_tokens=32, min_new_tokens=32)
    ours = model.generate(**call)
    assert last_generation(model).path == "cuda-graph" and recorded, "the graph holds the decode modules"
    theirs = library_generate(model, **call, do_sample=False)
    for row, prompt in enumerate(prompts):
        prompt = torch.tensor([prompt], device="cuda")
        _assert_greedy_agrees(model, prompt, torch.cat([prompt, ours[row : row + 1, width:]], 1),
                              torch.cat([prompt, theirs[row : row + 1, width:]], 1))  # fmt: skip


def test_a_decode_module_that_cannot_be_recorded_leaves_the_models_own_layers_in_the_graph(
    folder, monkeypatch, caplog
):
    from tunesmith.generation.decode_modules import DecodeAttention

    def broken(self, *args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(DecodeAttention, "forward", broken)
    model, tokenizer = FastLanguageModel.from_pretrained(folder)
    FastLanguageModel.for_inference(model)
    call = _greedy_call(tokenizer, "The patient reported fatigue")
    ours = model.generate(**call)
    assert last_generation(model).path == "cuda-graph"
    assert "decode modules could not be recorded" in caplog.text and "injected" in caplog.text
    _assert_greedy_agrees(model, call["input_ids"], ours, library_generate(model, **call, do_sample=False))
