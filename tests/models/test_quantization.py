"""4-bit (NF4) loading on CPU: the weights really are 4-bit, generation works, and gradients taken after
``generate()`` match the dense model built from the same dequantized weights."""

from __future__ import annotations

import bitsandbytes as bnb
import peft
import torch
from _models import rel_err

from tunesmith.models.loader import load


def input_gradient(model, ids):
    """Loss and d(loss)/d(input embeddings): the signal every LoRA gradient is built from."""
    embeds = model.get_input_embeddings()(ids).detach().float().requires_grad_(True)
    loss = model(inputs_embeds=embeds, labels=ids).loss
    loss.backward()
    return loss.detach(), embeds.grad


def dense_twin(folder, quantized):
    """The full-precision model with every 4-bit weight replaced by its dequantized value."""
    dense, _ = load(folder)
    layers = dict(quantized.named_modules())
    for name, module in dense.named_modules():
        if isinstance(layers.get(name), bnb.nn.Linear4bit):
            weight = layers[name].weight
            module.weight.data = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    return dense


def test_4bit_gradients_after_generate_match_the_dense_reference(tiny_llama_dir):
    model, tokenizer = load(tiny_llama_dir, load_in_4bit=True)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7, "every projection of both layers is NF4"
    assert all(m.weight.quant_state.quant_type == "nf4" for m in four_bit)
    reference = dense_twin(tiny_llama_dir, model)

    ids = tokenizer(
        "The patient reported fatigue and a headache for two weeks.", return_tensors="pt"
    ).input_ids
    model.generate(ids, max_new_tokens=4, do_sample=False)  # the eval pass that used to corrupt gradients
    loss, grad = input_gradient(model, ids)
    ref_loss, ref_grad = input_gradient(reference, ids)

    assert torch.allclose(loss, ref_loss, rtol=1e-4)
    assert rel_err(grad, ref_grad) < 1e-3

    # The same through LoRA adapters, as QLoRA training computes them (random A and B so both get gradients).
    lora_grads = []
    for base in (model, reference):
        torch.manual_seed(0)
        adapted = peft.get_peft_model(
            base, peft.LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
        )
        adapted(input_ids=ids, labels=ids).loss.backward()
        lora_grads.append({n: p.grad for n, p in adapted.named_parameters() if p.requires_grad})
    assert lora_grads[0].keys() == lora_grads[1].keys() and len(lora_grads[0]) == 2 * 14
    for name, ref in lora_grads[1].items():
        assert rel_err(lora_grads[0][name], ref) < 1e-3, name


def test_default_model_in_4bit_answers_sensibly(default_model_path):
    model, tokenizer = load("smollm2-135m-instruct", load_in_4bit=True)
    fp32_bytes = (default_model_path / "model.safetensors").stat().st_size
    assert model.get_memory_footprint() < 0.35 * fp32_bytes
    messages = [{"role": "user", "content": "What are common causes of fatigue?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).startswith("Fatigue is")
