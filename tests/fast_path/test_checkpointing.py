"""Smart checkpointing's plan: recompute only as many layers as the memory budget requires."""

from __future__ import annotations

import torch

from tunesmith.fast_path.checkpointing import (
    SAFETY,
    layer_bytes_per_token,
    plain_layer_bytes_per_token,
    plan_checkpointing,
)

GIB = 2**30


def _llama8b():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8)  # fmt: skip


def test_room_for_everything_means_no_recompute():
    full, kept = layer_bytes_per_token(_llama8b())
    plan = plan_checkpointing(32, 4096, full, kept, free_bytes=100 * GIB, offload=False)
    assert plan.checkpointed == 0 and not plan.offload
    assert 12 < plan.estimate_gib < 24  # ~100 KB per token per layer for 4,096 tokens x 32 layers, + SAFETY


def test_tight_budget_checkpoints_just_enough_layers():
    full, kept = layer_bytes_per_token(_llama8b())
    tokens = 4096
    plan = plan_checkpointing(32, tokens, full, kept, free_bytes=8 * GIB, offload=False)
    assert 0 < plan.checkpointed < 32
    assert plan.estimate_gib * GIB <= 8 * GIB
    fewer = plan_checkpointing(
        32, tokens, full, kept, free_bytes=8 * GIB + full * tokens * SAFETY * 2, offload=False
    )
    assert fewer.checkpointed < plan.checkpointed, "more memory, fewer recomputed layers"


def test_offload_only_when_even_full_checkpointing_does_not_fit():
    full, kept = layer_bytes_per_token(_llama8b())
    assert not plan_checkpointing(32, 4096, full, kept, 0.1 * GIB, offload=False).offload
    plan = plan_checkpointing(32, 4096, full, kept, 0.1 * GIB, offload=True)
    assert plan.offload and plan.checkpointed == 32


def test_plain_path_count_bounds_what_a_layer_keeps_on_transformers_path(tiny):
    """What autograd saves inside one decoder layer with LoRA (float32), against the plan's count."""
    from _models import with_lora

    model, _ = tiny
    lora = with_lora(model).train()
    layer = lora.base_model.model.model.layers[0]
    saved, inside = [], []
    layer.register_forward_pre_hook(lambda *_: inside.append(True))
    layer.register_forward_hook(lambda *_: inside.clear())

    def pack(tensor):
        if inside:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    tokens = 2 * 64
    ids = torch.randint(0, 100, (2, 64))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lora(input_ids=ids, labels=ids, use_cache=False)
    measured = sum(saved) / tokens
    estimate, _ = plain_layer_bytes_per_token(model.config, element_bytes=4)
    assert measured <= estimate <= 4 * measured, (measured, estimate)


def test_the_plan_is_said_once_and_again_only_when_a_batch_needs_more(tiny, caplog):
    """Rows of varying length change the plan at most steps; the user sees it when it grows, not each time."""
    from tunesmith.fast_path.checkpointing import CheckpointPlan, SmartCheckpointing

    model, _ = tiny
    layers = model.model.layers
    smart = SmartCheckpointing(model.model, layers, model.config, max_memory_gb=None, offload=True)
    try:
        for checkpointed, offload in [(1, False), (0, False), (1, False), (2, False), (1, False), (2, True)]:
            smart.apply_plan(
                CheckpointPlan(len(layers), checkpointed, offload, budget_gib=1.0, estimate_gib=0.5)
            )
        assert all(layer.gradient_checkpointing for layer in layers)  # the last plan is the one in force
    finally:
        smart.remove()
    said = [r.getMessage() for r in caplog.records if "checkpointing plan" in r.getMessage()]
    assert [s.split(";")[0] for s in said] == [
        "checkpointing plan: 1 of 2 layers recompute",
        "checkpointing plan: 2 of 2 layers recompute",
        "checkpointing plan: 2 of 2 layers recompute, their inputs in pinned CPU memory",
    ]


def test_the_reserve_counts_what_a_step_needs_beside_the_activations(tiny):
    """A cap just above the memory held must leave room to keep layers: the reserve is the loss chunk, the
    gradients still to come, one layer's working set and the largest dequantized 4-bit weight, not a fixed
    amount that swallows a small card's slack (a fixed 1.5 GiB left Llama-3.1-8B's capped run 1.25 GiB under
    the cap, recomputing every layer)."""
    import bitsandbytes as bnb
    from _models import with_lora

    from tunesmith.fast_path.checkpointing import (
        MARGIN_BYTES,
        SmartCheckpointing,
        largest_dequantized_bytes,
        reserve_bytes,
    )
    from tunesmith.kernels.fused_linear_cross_entropy import CHUNK_LOGITS_BYTES

    model, _ = tiny
    lora = with_lora(model).train()
    decoder = lora.base_model.model.model
    smart = SmartCheckpointing(decoder, decoder.layers, model.config, max_memory_gb=None, offload=False)
    try:
        trainable = sum(p.numel() * p.element_size() for p in decoder.parameters() if p.requires_grad)
        assert trainable > 0 and smart._pending_grad_bytes() == trainable
        ids = torch.randint(0, 100, (2, 16))
        lora(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        assert smart._pending_grad_bytes() == 0, "gradients already held are counted by the allocator"
    finally:
        smart.remove()
    assert largest_dequantized_bytes(decoder) == 0, "no 4-bit weights"
    mlp = torch.nn.Sequential(
        *(bnb.nn.Linear4bit(i, o, bias=False, quant_type="nf4") for i, o in [(64, 224), (224, 64), (64, 32)])
    ).to("cpu")  # quantizes
    assert largest_dequantized_bytes(mlp) == 224 * 64 * 2

    full, _ = layer_bytes_per_token(_llama8b())
    tutorial_batch, gate_bf16 = 2 * 400, 14336 * 4096 * 2
    reserve = reserve_bytes(tutorial_batch, full, 168 * 2**20, gate_bf16)
    assert reserve == CHUNK_LOGITS_BYTES + 168 * 2**20 + full * tutorial_batch + gate_bf16 + MARGIN_BYTES
    assert reserve < 1.25 * GIB


def test_without_the_fused_head_the_reserve_counts_the_plain_losss_full_logits():
    """Gemma 2 caps its logits, so it keeps the plain loss, which holds the whole batch's logits in float32
    (not one 263-MB chunk): at 2 x 400 tokens and Gemma's 256,000 words that is 3.3 GB the plan must leave
    free, or a capped run passes its cap in the loss."""
    from _models import tiny_model

    from tunesmith.fast_path.checkpointing import loss_peak_bytes, reserve_bytes
    from tunesmith.fast_path.patch import apply_cpu_path, has_fused_loss, unpatch
    from tunesmith.kernels.fused_linear_cross_entropy import CHUNK_LOGITS_BYTES

    assert loss_peak_bytes(800, None) == CHUNK_LOGITS_BYTES
    assert loss_peak_bytes(800, 256_000) == 800 * 256_000 * 16 > 12 * CHUNK_LOGITS_BYTES
    assert reserve_bytes(800, 0, 0, 0, loss_peak_bytes(800, 256_000)) > 3.3e9
    for family, plain_vocab in [("llama", None), ("gemma2", 256)]:
        model = tiny_model(family).train()
        apply_cpu_path(model)
        try:
            assert has_fused_loss(model) is (plain_vocab is None)
            smart = model.__dict__["_tunesmith_fast_path"].checkpointing
            assert smart.plain_loss_vocab == plain_vocab, family
        finally:
            unpatch(model)


def test_a_cap_that_even_recomputing_every_layer_passes_is_said(tiny, caplog):
    """Some room left, but less than the leanest plan keeps (Gemma-3-4B at Unsloth's 3.67 GiB passed the cap by
    0.12 GiB in silence): the user is told once that the peak will pass the cap, and the cap that would hold."""
    from tunesmith.fast_path.checkpointing import SmartCheckpointing, reserve_bytes

    model, _ = tiny
    model.train()
    layers = model.model.layers
    full, kept = 4 * 2**20, 2 * 2**20  # per token and layer
    smart = SmartCheckpointing(
        model.model, layers, model.config, None, offload=False, bytes_per_token=lambda config: (full, kept),
        on_cpu=True,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 16))
    reserve = reserve_bytes(ids.numel(), full, smart._pending_grad_bytes())
    smart.max_memory_gb = (reserve + 64 * 2**20) / GIB  # 64 MiB for activations
    leanest = (len(layers) * kept + full * SAFETY) * ids.numel()  # every layer recomputed: 320 MiB
    try:
        for _ in range(2):
            model(input_ids=ids, labels=ids, use_cache=False)
    finally:
        smart.remove()
    assert smart.last_plan.checkpointed == len(layers)
    said = [r.getMessage() for r in caplog.records if "above the cap" in r.getMessage()]
    assert len(said) == 1, "said once"
    assert (
        f"leaves 0.06 GiB for activations, and even with every layer recomputed they need {leanest / GIB:.2f} GiB"
        in said[0]
    )
    assert f"Raise max_memory_gb to at least {(reserve + leanest) / GIB + 0.5:.1f}" in said[0]


def test_adapted_experts_count_the_stack_copy_each_layer_keeps():
    """With LoRA on a mixture of experts' 3-D stacks, each layer keeps a 16-bit copy of its stacks (weight plus
    update) for backward, whatever the tokens: 1.2 GB a layer on Qwen3-30B-A3B, which the per-token count
    missed (a 12-layer run peaked at 31.6 GiB). The plan counts it, and what autograd saves stays under it."""
    from _models import kept_by_first_layer, tiny_model, with_lora

    from tunesmith.fast_path.checkpointing import adapted_expert_bytes

    model = tiny_model("qwen3_moe", num_experts=16, moe_intermediate_size=64).to(torch.bfloat16)
    assert adapted_expert_bytes(model.model.layers) == 0, "no adapted experts, no copy"
    lora = with_lora(model).train()
    layers = lora.base_model.model.model.layers
    config = model.config
    experts = config.num_experts * 3 * config.moe_intermediate_size * config.hidden_size
    assert experts * 2 < adapted_expert_bytes(layers) < experts * 2 * 1.5  # the stacks and their factors

    ids = torch.randint(0, 100, (2, 8))
    _, saved = kept_by_first_layer(lora, ids)
    full_per_token, _ = plain_layer_bytes_per_token(model.config, element_bytes=2)
    measured = sum(saved.values())
    assert experts * 2 < measured <= full_per_token * ids.numel() + adapted_expert_bytes(layers)

    room = measured * SAFETY * 1.5  # one and a half layers as measured, with the plan's headroom
    plain = plan_checkpointing(2, ids.numel(), full_per_token, 0, free_bytes=room, offload=False)
    counted = plan_checkpointing(2, ids.numel(), full_per_token, 0, room, False, experts * 2)
    assert (plain.checkpointed, counted.checkpointed) == (0, 2), (
        "the copies do not fit: both layers recompute"
    )
