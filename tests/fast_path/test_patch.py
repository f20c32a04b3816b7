"""``apply_fast_path`` / ``unpatch`` on tiny random Llamas, Qwen2s, Qwen3s, Gemmas and Phi-3s on CPU (the
references run there)."""

from __future__ import annotations

import logging

import torch
from _models import ODD, loss_and_grads, rel_err, tiny_model, with_lora

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path.experts import FastMoEBlock
from tunesmith.fast_path.modules import FastAttention, FastMLP, FastRMSNorm, FusedLMHead
from tunesmith.fast_path.patch import apply_fast_path, unpatch


def _batch():
    x = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(3))
    labels = x.clone()
    labels[1, :4] = IGNORE_INDEX
    return x, labels


def test_patched_model_matches_original_and_unpatch_restores_it():
    model = with_lora(tiny_model(**ODD)).train()
    x, labels = _batch()
    keys = list(model.state_dict())
    loss0, grads0 = loss_and_grads(model, x, labels)
    with torch.no_grad():
        logits0 = model.eval()(input_ids=x).logits
    model.train()

    assert apply_fast_path(model)
    layer = model.get_base_model().model.layers[0]
    assert isinstance(layer.self_attn, FastAttention) and isinstance(layer.mlp, FastMLP)
    assert isinstance(layer.input_layernorm, FastRMSNorm) and isinstance(
        model.get_base_model().lm_head, FusedLMHead
    )
    assert list(model.state_dict()) == keys, "checkpoint and adapter names must not change"
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5
    assert max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5

    unpatch(model)
    layer = model.get_base_model().model.layers[0]
    assert type(layer.self_attn).__name__ == "LlamaAttention" and type(layer.mlp).__name__ == "LlamaMLP"
    assert "_loss_function" not in model.get_base_model().__dict__
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=x).logits, logits0)


def test_training_forward_never_builds_logits_but_eval_does():
    model = with_lora(tiny_model(**ODD)).train()
    x, labels = _batch()
    apply_fast_path(model)
    out = model(input_ids=x, labels=labels)
    assert out.logits.stride() == (0, 0, 0), "training with labels: a zero-stride placeholder, no memory"
    with torch.no_grad():
        logits = model(input_ids=x).logits
    assert logits.stride()[-1] == 1 and logits.abs().sum() > 0


def test_adapters_added_after_patching_survive_unpatch():
    model = tiny_model(**ODD).train()
    assert apply_fast_path(model)
    model = with_lora(model)  # PEFT swaps q_proj etc. on the fast-path wrappers
    x, labels = _batch()
    loss_and_grads(model, x, labels)
    unpatch(model.get_base_model())  # the model the fast path was applied to, now inside PEFT's wrapper
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(names) == 14 and all("base_layer" not in n.split("lora_A")[0].split(".")[-2] for n in names)
    assert type(model.get_base_model().model.layers[0].self_attn).__name__ == "LlamaAttention"


def test_apply_twice_is_a_no_op_and_unpatch_twice_is_harmless():
    model = with_lora(tiny_model(**ODD))
    assert apply_fast_path(model) and apply_fast_path(model)
    assert isinstance(model.get_base_model().model.layers[0].mlp, FastMLP)
    unpatch(model)
    unpatch(model)
    assert type(model.get_base_model().model.layers[0].mlp).__name__ == "LlamaMLP"


def test_other_architectures_keep_the_plain_path_with_one_notice(caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    with caplog.at_level(logging.WARNING):
        assert apply_fast_path(model) is False
    notices = [r.getMessage() for r in caplog.records if r.name == "tunesmith.fast_path.patch"]
    assert len(notices) == 1 and "gpt2" in notices[0] and "plain" in notices[0]
    unpatch(model)  # nothing to undo


def test_qwen2_gets_the_fast_path_with_its_qkv_bias():
    model = with_lora(tiny_model("qwen2", **ODD)).train()
    x, labels = _batch()
    loss0, grads0 = loss_and_grads(model, x, labels)
    assert apply_fast_path(model)
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5 and max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5


def test_qwen3_gets_the_fast_path_with_its_per_head_norms():
    # head size 16 with hidden 48: the heads' width (64) is not the hidden size, as in Qwen3-4B
    model = with_lora(tiny_model("qwen3", **{**ODD, "head_dim": 16})).train()
    with torch.no_grad():  # the norms start at 1: make them matter
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.3)
    x, labels = _batch()
    keys = list(model.state_dict())
    loss0, grads0 = loss_and_grads(model, x, labels)
    assert apply_fast_path(model)
    attention = model.get_base_model().model.layers[0].self_attn
    assert isinstance(attention, FastAttention) and isinstance(attention.q_norm, FastRMSNorm)
    assert isinstance(attention.k_norm, FastRMSNorm) and list(model.state_dict()) == keys
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5 and max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5
    unpatch(model)
    attention = model.get_base_model().model.layers[0].self_attn
    assert type(attention).__name__ == "Qwen3Attention" and type(attention.q_norm).__name__ == "Qwen3RMSNorm"
    assert list(model.state_dict()) == keys


def _gemma(family: str, **config):
    # Gemma 3: every second layer local with a window of 8, shorter than the 13-token batch (so those fall
    # back); Gemma 2: its soft-capped attention falls back, its norms and GeGLU MLP do not
    sizes = {**ODD, "head_dim": 16, "query_pre_attn_scalar": 12, "sliding_window": 8, **config}
    if family == "gemma3_text":
        sizes["layer_types"] = ["sliding_attention", "full_attention"]
    return with_lora(tiny_model(family, **sizes)).train()


def test_gemma_gets_the_fast_path_with_offset_norms_and_geglu():
    for family in ("gemma3_text", "gemma2"):
        model = _gemma(family)
        x, labels = _batch()
        keys = list(model.state_dict())
        loss0, grads0 = loss_and_grads(model, x, labels)
        assert apply_fast_path(model), family
        layer = model.get_base_model().model.layers[1]
        assert isinstance(layer.pre_feedforward_layernorm, FastRMSNorm) and isinstance(layer.mlp, FastMLP)
        assert layer.post_feedforward_layernorm.weight_offset == 1.0 and list(model.state_dict()) == keys
        loss1, grads1 = loss_and_grads(model, x, labels)
        assert abs(loss1 - loss0) < 1e-5, family
        assert max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5, family
        unpatch(model)
        assert type(model.get_base_model().model.layers[1].mlp).__name__.startswith("Gemma")


def test_gemma_attention_fuses_only_where_sdpa_computes_what_the_layer_does():
    gemma3 = _gemma("gemma3_text").get_base_model()
    apply_fast_path(gemma3)
    local, full = (layer.self_attn for layer in gemma3.model.layers)
    cos_sin = (torch.ones(1, 13, 16), torch.ones(1, 13, 16))  # whole heads of 16 rotated
    assert not local._can_fuse(cos_sin, {}, seq_len=13), "a local layer's window (8) is shorter"
    assert local._can_fuse(cos_sin, {}, seq_len=8) and full._can_fuse(cos_sin, {}, seq_len=13)
    gemma2 = _gemma("gemma2").get_base_model()
    apply_fast_path(gemma2)
    assert not gemma2.model.layers[1].self_attn._can_fuse(cos_sin, {}, seq_len=4), "soft-capped logits"
    assert not isinstance(gemma2.lm_head, FusedLMHead), "Gemma 2 soft-caps its final logits too"


def test_phi3_gets_the_fast_path_through_its_fused_projections():
    model = with_lora(tiny_model("phi3", **ODD)).train()
    x, labels = _batch()
    keys = list(model.state_dict())
    loss0, grads0 = loss_and_grads(model, x, labels)
    assert apply_fast_path(model)
    layer = model.get_base_model().model.layers[0]
    assert layer.self_attn.fused_qkv and layer.mlp.fused_gate_up and list(model.state_dict()) == keys
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5 and max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5
    unpatch(model)
    layer = model.get_base_model().model.layers[0]
    assert (type(layer.self_attn).__name__, type(layer.mlp).__name__) == ("Phi3Attention", "Phi3MLP")


def test_rope_on_part_of_each_head_keeps_the_layers_own_attention():
    # Phi-4-mini rotates three quarters of each head: the in-place RoPE kernel rotates whole heads
    model = with_lora(tiny_model("phi3", **ODD, partial_rotary_factor=0.5)).train()
    x, labels = _batch()
    loss0, grads0 = loss_and_grads(model, x, labels)
    apply_fast_path(model)
    attention = model.get_base_model().model.layers[0].self_attn
    half = (torch.ones(1, 13, attention.head_dim // 2),) * 2
    assert not attention._can_fuse(half, {}, seq_len=13)
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5 and max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5


def test_qwen3_moe_gets_the_fast_path_around_its_experts():
    model = with_lora(tiny_model("qwen3_moe", **ODD, head_dim=16)).train()
    x, labels = _batch()
    keys = list(model.state_dict())
    loss0, grads0 = loss_and_grads(model, x, labels)
    assert apply_fast_path(model)
    layer = model.get_base_model().model.layers[0]
    assert isinstance(layer.self_attn, FastAttention) and isinstance(layer.self_attn.q_norm, FastRMSNorm)
    assert isinstance(layer.mlp, FastMoEBlock), "LoRA applied per token group, no stack rebuilt"
    assert type(layer.mlp.experts).__name__ == "ParamWrapper", "PEFT still sees its adapters"
    assert list(model.state_dict()) == keys
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5 and max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5
    assert any("experts" in n for n in grads1), "the experts' adapters train too"
    with torch.no_grad():  # generation keeps the block's own path (a CUDA graph can capture it); same logits
        patched = model.eval()(input_ids=x).logits
        with model.disable_adapter():  # PEFT's switch reaches the experts through the patched block
            patched_off = model(input_ids=x).logits
    unpatch(model)
    with torch.no_grad():
        assert torch.equal(patched, model(input_ids=x).logits)
        with model.disable_adapter():
            off = model(input_ids=x).logits
        assert torch.equal(patched_off, off) and not torch.equal(off, patched)
    layer = model.get_base_model().model.layers[0]
    assert type(layer.self_attn).__name__ == "Qwen3MoeAttention"
    assert type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock" and list(model.state_dict()) == keys


def test_right_padded_rows_train_through_the_mask_free_kernel_with_the_same_loss(monkeypatch):
    """The trainer pads each batch after its rows' ends: causal attention alone then gives the real tokens
    what the padding mask would, so the fast path skips the mask (SDPA's flash kernel, no mask copy per layer)
    and the loss and gradients stay those of the masked model. Left padding keeps the mask, with each query
    head given its key and value so that a fused kernel can take it."""
    model = with_lora(tiny_model(**ODD)).train()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped heads
    x, labels = _batch()
    right = torch.ones_like(x)
    right[0, 9:] = 0
    left = right.flip(1)
    masks_seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        masks_seen.append(attn_mask is not None)
        # A fused kernel takes a mask only without grouped heads (else SDPA falls back to its math kernel).
        assert attn_mask is None or k.shape[1] == q.shape[1]
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    for mask in (right, left):
        want_loss, want = loss_and_grads(model, x, labels.masked_fill(mask == 0, IGNORE_INDEX), mask)
        apply_fast_path(model)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        masks_seen.clear()
        loss, grads = loss_and_grads(model, x, labels.masked_fill(mask == 0, IGNORE_INDEX), mask)
        monkeypatch.undo()
        unpatch(model)
        assert abs(loss - want_loss) < 1e-5
        assert max(rel_err(grads[n], want[n]) for n in want) < 1e-5
        assert set(masks_seen) == {mask is left}, "a mask for left padding only"


def test_padding_counts_as_after_the_rows_only_when_no_padded_position_is_labelled():
    from tunesmith.fast_path.packing import padding_only_after_rows

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[5, 6, 7, IGNORE_INDEX], [1, 2, 3, 4]])
    assert padding_only_after_rows(mask, labels)
    assert not padding_only_after_rows(mask, torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]]))
    assert not padding_only_after_rows(mask.flip(1), labels.flip(1))
    assert not padding_only_after_rows(mask, None), "no labels: the padded positions' outputs may be read"


def test_recomputed_layers_attend_as_their_forward_did():
    """Smart checkpointing recomputes layers in backward, after the model's forward (and its packing hook)
    ended: a right-padded batch (no mask in forward) and a packed row (its block mask) must recompute with the
    same masking, or the checkpoint sees other saved tensors, or worse, the gradients change."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    from tunesmith.fast_path.packing import pack_without_padding

    model = with_lora(tiny_model(**ODD)).train()
    x, labels = _batch()
    right = torch.ones_like(x)
    right[0, 9:] = 0
    labels = labels.masked_fill(right == 0, IGNORE_INDEX)
    packed = pack_without_padding([[5, 17, 3, 88, 41, 9, 60], [12, 7, 33, 2, 71]])

    def step(**batch):
        model.zero_grad(set_to_none=True)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.loss.item(), grads

    batches = [dict(input_ids=x, attention_mask=right, labels=labels), packed]
    apply_fast_path(model)
    wants = [step(**batch) for batch in batches]
    for layer in model.get_base_model().model.layers:  # what a tight budget sets
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    for batch, (want_loss, want) in zip(batches, wants, strict=True):
        loss, grads = step(**batch)
        assert abs(loss - want_loss) < 1e-6
        assert max(rel_err(grads[n], want[n]) for n in want) < 1e-6
    unpatch(model)
