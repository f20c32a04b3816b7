"""``model.generate`` after ``FastLanguageModel.for_inference``: the static-cache loop gives transformers'
answer token for token, batches like single prompts, samples as asked, and hands training back untouched."""

from __future__ import annotations

import io

import pytest
import torch
from _models import greedy_divergence, loss_and_grads, tiny_model
from transformers import TextStreamer

from tunesmith import FastLanguageModel
from tunesmith.generation.chat import answer_all, chat, prompt_ids
from tunesmith.generation.generate import last_generation, library_generate

QUESTIONS = ["What are the symptoms of anemia?", "Why do I feel tired all the time?", "Is a fever dangerous?"]


@pytest.fixture(scope="module")
def default_model(default_model_path):
    model, tokenizer = FastLanguageModel.from_pretrained(default_model_path)
    return FastLanguageModel.for_inference(model), tokenizer


def test_the_tutorials_generate_call_gives_transformers_greedy_answer_for_128_tokens(default_model):
    model, tokenizer = default_model
    ids = prompt_ids(tokenizer, "Explain the symptoms of anemia in detail.")
    call = dict(attention_mask=torch.ones_like(ids), max_new_tokens=128, min_new_tokens=128, use_cache=True)
    ours = model.generate(input_ids=ids, **call)
    assert last_generation(model).path == "eager" and last_generation(model).new_tokens == 128
    theirs = library_generate(model, input_ids=ids, **call, do_sample=False)
    assert ours.shape == theirs.shape == (1, ids.shape[1] + 128)
    assert greedy_divergence(model, ids, ours[0, ids.shape[1] :], theirs[0, ids.shape[1] :]) is None


def test_probes_answered_as_one_left_padded_batch_equal_each_answered_alone(default_model):
    model, tokenizer = default_model
    together = answer_all(model, tokenizer, QUESTIONS, max_new_tokens=24)
    assert last_generation(model).path == "eager"
    alone = [chat(model, tokenizer, q, max_new_tokens=24, stream=False) for q in QUESTIONS]
    assert together == alone
    assert all(len(answer.split()) > 5 for answer in together)


def test_rows_that_end_early_are_padded_and_the_streamer_sees_every_token(tiny_llama_dir):
    model, tokenizer = FastLanguageModel.from_pretrained(tiny_llama_dir)
    FastLanguageModel.for_inference(model)
    ids = tokenizer(["the patient", "a fever that lasts"], return_tensors="pt", padding=True)
    free = model.generate(**ids, max_new_tokens=12, do_sample=False)
    stop = int(free[0, ids.input_ids.shape[1] + 2])  # row 0's third new token becomes an end token
    pad = tokenizer.pad_token_id
    ours = model.generate(**ids, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=pad)
    theirs = library_generate(
        model, **ids, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=pad
    )
    assert torch.equal(ours, theirs)
    assert ours[0, ids.input_ids.shape[1] + 3 :].eq(pad).all(), "after its end token a row holds padding"
    one = ids.input_ids[1:, ids.attention_mask[1].bool()]
    streamed = io.StringIO()

    class Capture(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            streamed.write(text)

    out = model.generate(
        input_ids=one, max_new_tokens=10, do_sample=False, streamer=Capture(tokenizer, skip_prompt=True)
    )
    assert streamed.getvalue() == tokenizer.decode(out[0, one.shape[1] :])


def test_sampling_follows_the_seed_and_top_k_1_is_greedy_and_beam_search_goes_to_transformers(tiny_llama_dir):
    model, tokenizer = FastLanguageModel.from_pretrained(tiny_llama_dir)
    FastLanguageModel.for_inference(model)
    ids = tokenizer("the patient reported", return_tensors="pt").input_ids
    sampled = []
    for _ in range(2):
        torch.manual_seed(7)
        sampled.append(
            model.generate(input_ids=ids, max_new_tokens=16, do_sample=True, temperature=1.3, top_p=0.9)
        )
    assert torch.equal(*sampled) and last_generation(model).path == "eager"
    torch.manual_seed(8)
    other = model.generate(input_ids=ids, max_new_tokens=16, do_sample=True, temperature=1.3, top_p=0.9)
    assert not torch.equal(other, sampled[0]), "a random-init model samples differently under another seed"
    greedy = model.generate(input_ids=ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(model.generate(input_ids=ids, max_new_tokens=16, do_sample=True, top_k=1), greedy)
    beams = model.generate(input_ids=ids, max_new_tokens=8, num_beams=2, do_sample=False)
    assert last_generation(model).path == "transformers" and "num_beams" in last_generation(model).why
    assert torch.equal(
        beams, library_generate(model, input_ids=ids, max_new_tokens=8, num_beams=2, do_sample=False)
    )


def test_a_repetition_penalty_stays_on_the_fast_loop_with_transformers_tokens(tiny_llama_dir):
    model, tokenizer = FastLanguageModel.from_pretrained(tiny_llama_dir)
    FastLanguageModel.for_inference(model)
    prompts = ["the patient reported", "rest helps most people recover"]
    call = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, repetition_penalty=1.3)
    alone, changed = [], []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        alone.append(model.generate(input_ids=ids, **call)[0, ids.shape[1] :])
        assert last_generation(model).path == "eager"  # not sent on to transformers
        assert torch.equal(alone[-1], library_generate(model, input_ids=ids, **call)[0, ids.shape[1] :])
        plain = model.generate(input_ids=ids, **{**call, "repetition_penalty": 1.0})[0, ids.shape[1] :]
        changed.append(not torch.equal(alone[-1], plain))
    assert any(changed)  # the penalty changes the tiny model's looping answers
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, **call)[:, batch.input_ids.shape[1] :]
    assert all(
        torch.equal(row, one) for row, one in zip(together, alone, strict=True)
    )  # padding not penalised


def test_for_training_after_generating_trains_exactly_as_a_model_that_never_generated(tiny_llama_dir):
    def adapted():
        model, _ = FastLanguageModel.from_pretrained(tiny_llama_dir)
        return FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, random_state=3)

    batch = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    used = adapted()
    FastLanguageModel.for_inference(used)
    used.generate(input_ids=batch[:1, :8], max_new_tokens=20, do_sample=False)
    assert "generate" in used.__dict__
    FastLanguageModel.for_training(used)
    assert "generate" not in used.__dict__, "for_training gives generate() back to transformers"
    fresh = FastLanguageModel.for_training(adapted())
    loss_used, grads_used = loss_and_grads(used, batch, batch)
    loss_fresh, grads_fresh = loss_and_grads(fresh, batch, batch)
    assert torch.equal(loss_used, loss_fresh)
    assert grads_used.keys() == grads_fresh.keys() and all(
        torch.equal(grads_used[k], grads_fresh[k]) for k in grads_used
    )


@pytest.mark.parametrize("family", ["mistral", "gemma3_text"])
def test_sliding_window_families_go_to_transformers_and_say_why(family):
    model = FastLanguageModel.for_inference(tiny_model(family, sliding_window=8))
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    ours = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert last_generation(model).path == "transformers" and "sliding" in last_generation(model).why
    assert torch.equal(ours, library_generate(model, input_ids=ids, max_new_tokens=6, do_sample=False))
