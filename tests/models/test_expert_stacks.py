"""A mixture of experts' 3-D stacks in 4-bit: they train and merge as their dequantized 16-bit weights would,
and hold no 16-bit copy between forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from _models import kept_by_first_layer, loss_and_grads, rel_err, tiny_model, with_lora

from tunesmith.models.expert_stacks import STACK_NAMES, dense_stack, is_4bit_stack, quantize_expert_stacks


def _pair(device: str = "cpu", dtype: torch.dtype = torch.bfloat16, **sizes):
    """(a 4-bit-stack model on ``device``, quantized there as the loader does; the same model on the CPU with
    those stacks dequantized into ``dtype`` parameters)."""
    sizes = {"num_experts": 16, "moe_intermediate_size": 64, **sizes}
    model = tiny_model("qwen3_moe", **sizes).to(dtype)
    quantized = copy.deepcopy(model).to(device)
    assert quantize_expert_stacks(quantized) == 2 * len(model.model.layers)
    with torch.no_grad():
        for plain, packed in zip(model.model.layers, quantized.model.layers, strict=True):
            for name in STACK_NAMES:
                getattr(plain.mlp.experts, name).copy_(dense_stack(packed.mlp.experts, name).cpu())
    return quantized, model


def _same_adapters(ours, ref):
    with torch.no_grad():
        mine = dict(ours.named_parameters())
        for name, param in ref.named_parameters():
            if "lora_" in name:
                mine[name].copy_(param)


def _attention_only_pair(quantized, plain):
    """Both models with the same LoRA on two attention projections only, the experts left unadapted."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    ours, ref = (
        get_peft_model(quantized, config).train(),
        get_peft_model(plain, copy.deepcopy(config)).train(),
    )
    _same_adapters(ours, ref)
    return ours, ref


def _at_rest(model) -> bool:
    """No 16-bit stack held and no LoRA parametrization left behind after a forward."""
    experts = [layer.mlp.experts for layer in model.get_base_model().model.layers]
    experts = [e.get_base_layer() if hasattr(e, "get_base_layer") else e for e in experts]
    return all(
        getattr(e, n).untyped_storage().nbytes() <= 4 and not torch.nn.utils.parametrize.is_parametrized(e)
        for e in experts
        for n in STACK_NAMES
    )


@pytest.mark.parametrize("recompute", [False, True], ids=["kept", "recomputed"])
def test_4bit_stacks_train_as_their_dequantized_weights(recompute):
    """Three SGD steps with LoRA on attention and every expert: the loss and every LoRA gradient equal those
    of the 16-bit model holding the dequantized stacks, with each layer's forward kept or recomputed in
    backward; after each step the stacks are back to their 4-bit codes alone."""
    quantized, plain = _pair()
    ours, ref = with_lora(quantized).train(), with_lora(plain).train()
    _same_adapters(ours, ref)
    if recompute:
        for model in (ours, ref):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    x = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    steps = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5) for m in (ours, ref)]
    for _ in range(3):
        got, grads = loss_and_grads(ours, x, x)
        want, want_grads = loss_and_grads(ref, x, x)
        assert got == want
        assert max(rel_err(grads[n], want_grads[n]) for n in want_grads) == 0.0
        assert sum("experts" in n for n in grads) == 4 * len(plain.model.layers)  # A, B of both stacks
        assert _at_rest(ours)
        for step in steps:
            step.step()


@pytest.mark.parametrize(
    ("experts_adapted", "sliced"),
    [(True, False), (False, False), (True, True)],
    ids=["lora-on-experts", "attention-only", "lora-on-experts-sliced"],
)
def test_on_the_fast_path_4bit_stacks_train_as_their_dequantized_weights_and_no_stack_is_kept(
    experts_adapted, sliced, monkeypatch
):
    """The fast path's experts forward (LoRA per token group, the stack read again in backward): the loss and
    LoRA gradients of the unpatched model holding the dequantized stacks, while no tensor the size of a stack
    is kept for backward, so the plan counts no per-layer copy. Sliced: each stack is dequantized a few experts
    at a time (as a large stack is), and the reserve counts one slice, not the layer's stacks."""
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    from tunesmith.fast_path import experts as fast_experts
    from tunesmith.fast_path.checkpointing import adapted_expert_bytes, largest_dequantized_bytes
    from tunesmith.fast_path.experts import FastMoEBlock
    from tunesmith.fast_path.patch import apply_fast_path

    # Each expert's weights fill whole blocks of codes and of scales (64 x 256), so a stack can be cut.
    quantized, plain = _pair(dtype=torch.float32, moe_intermediate_size=256)
    expert_bytes = 2 * 256 * 64 * 4  # one expert of gate_up_proj, float32
    if sliced:
        monkeypatch.setattr(fast_experts, "DENSE_SLICE_BYTES", 5 * expert_bytes)
    smallest_stack = min(getattr(plain.model.layers[0].mlp.experts, n).nbytes for n in STACK_NAMES)
    if experts_adapted:
        ours, ref = with_lora(quantized).train(), with_lora(plain).train()
        _same_adapters(ours, ref)
    else:
        ours, ref = _attention_only_pair(quantized, plain)
    x = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(4))
    _, unpatched = kept_by_first_layer(ours, x)
    assert apply_fast_path(ours)
    layers = ours.get_base_model().model.layers
    assert all(isinstance(layer.mlp, FastMoEBlock) for layer in layers)
    assert adapted_expert_bytes(layers) == 0
    slice_experts = 4 if sliced else 16  # 16 experts in pieces of at most 5, evened out: four of four
    assert (
        largest_dequantized_bytes(ours.get_base_model().model, element_bytes=4)
        == slice_experts * expert_bytes
    )
    (got, grads), kept = kept_by_first_layer(ours, x)
    want, want_grads = loss_and_grads(ref, x, x)
    assert abs(got - want) / want < 1e-5
    assert max(rel_err(grads[n], want_grads[n]) for n in want_grads) < 1e-5
    assert sum("experts" in n for n in grads) == (4 * len(layers) if experts_adapted else 0)
    assert max(unpatched.values()) >= smallest_stack, "without the fast path a stack is kept"
    assert max(kept.values()) < smallest_stack, "no stack, dense or rebuilt, is kept for backward"
    assert _at_rest(ours)
    for layer in layers:  # recomputed in backward, as a tight budget sets: the stacks are read a third time
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    again, again_grads = loss_and_grads(ours, x, x)
    assert abs(again - want) / want < 1e-5
    assert max(rel_err(again_grads[n], want_grads[n]) for n in want_grads) < 1e-5
    assert _at_rest(ours)
    # PEFT's wrappers stay in the tree, so the merge of the patched model has every update.
    if experts_adapted:
        from tunesmith.export.merge import merged_tensors

        want = {t.name: t for t in merged_tensors(ref)}
        got = [t for t in merged_tensors(ours) if ".experts." in t.name]
        assert len(got) == 3 * 16 * len(layers)
        assert all(torch.equal(t.load(), want[t.name].load()) for t in got)


def test_a_4bit_stack_read_a_slice_of_experts_at_a_time_is_the_whole_stack():
    """Slices of a stack dequantize to the whole stack's rows, bit for bit, and each slice stays within its
    bytes (one expert more at most); a stack whose experts do not fill whole blocks is read whole."""
    from tunesmith.models.expert_stacks import expert_slices

    quantized, _ = _pair(moe_intermediate_size=256)
    experts = quantized.model.layers[0].mlp.experts
    for name in STACK_NAMES:
        per_expert = getattr(experts, name)[0].numel() * 2
        slices = expert_slices(experts, name, 3 * per_expert)
        assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 16)]
        pieces = torch.cat([dense_stack(experts, name, s) for s in slices])
        assert torch.equal(pieces, dense_stack(experts, name))
    uncut, _ = _pair(moe_intermediate_size=32)  # an expert of 32 x 64 weights: half a block of scales
    experts = uncut.model.layers[0].mlp.experts
    assert expert_slices(experts, "down_proj", 1) == [slice(0, 16)]


def test_frozen_4bit_stacks_without_adapters_give_the_right_gradients():
    """LoRA on attention only: the experts' product reads the dense stack itself in backward, after the stack
    went back to its codes; the gradients must still be those of the 16-bit model."""
    ours, ref = _attention_only_pair(*_pair())
    x = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for model in (ours, ref):  # B as after training, so every gradient is non-zero
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.01)
    got, grads = loss_and_grads(ours, x, x)
    want, want_grads = loss_and_grads(ref, x, x)
    assert got == want and max(rel_err(grads[n], want_grads[n]) for n in want_grads) == 0.0
    assert _at_rest(ours)


def test_4bit_stacks_merge_as_their_dequantized_weights_and_hold_a_quarter_of_the_memory():
    from tunesmith.export.merge import merged_tensors

    quantized, plain = _pair()
    experts = quantized.model.layers[0].mlp.experts
    assert all(is_4bit_stack(experts, n) for n in STACK_NAMES)
    packed = sum(b.numel() * b.element_size() for b in experts.buffers())
    dense = sum(getattr(experts, n).numel() * 2 for n in STACK_NAMES)
    # NF4 codes, an 8-bit scale per 64 weights and a float32 one per 256 scales, against bf16: 0.258, and the
    # tables (2 KB). With a float32 scale per 64 weights it would be 0.281 and more.
    assert packed < 0.27 * dense
    ours, ref = with_lora(quantized), with_lora(plain)
    _same_adapters(ours, ref)
    want = {t.name: t for t in merged_tensors(ref)}
    got = [t for t in merged_tensors(ours) if ".experts." in t.name]
    assert len(got) == 3 * 16 * len(plain.model.layers)  # gate, up and down of every expert
    for tensor in got:
        assert torch.equal(tensor.load(), want[tensor.name].load()), tensor.name


def test_4bit_stacks_generate_as_their_dequantized_weights_without_the_cuda_graph_path():
    """Greedy answers equal the 16-bit model's. The static-cache decoder (a CUDA graph on a GPU) is declined
    with the reason: a graph replays kernels, not the hooks that bring each layer's stacks in."""
    from tunesmith.generation.static_decoder import static_decoding_refusal

    quantized, plain = _pair()
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(quantized.generate(prompt, **settings), plain.generate(prompt, **settings))
    assert "4-bit expert stacks" in static_decoding_refusal(quantized)
    assert static_decoding_refusal(plain) is None or "4-bit" not in static_decoding_refusal(plain)


def test_ddp_takes_a_model_with_4bit_stacks(tmp_path):
    """DDP broadcasts every parameter and buffer when it starts: a one-element placeholder cannot be written
    ("more than one element ... refers to a single memory location"). The trainers' 4-bit preparation tells DDP
    to leave the stacks out, and a step trains (one gloo process here; the same list holds on more)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from tunesmith.training.lora import keep_4bit_trainable

    quantized, _ = _pair()
    model = with_lora(quantized).train()
    keep_4bit_trainable(model)  # what SFTTrainer, the preference trainers and GRPO call
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
        ddp(input_ids=x, labels=x).loss.backward()
    finally:
        dist.destroy_process_group()
    assert all(p.grad is not None for n, p in model.named_parameters() if "experts" in n and p.requires_grad)
    assert _at_rest(model)


@pytest.mark.gpu
def test_on_a_gpu_4bit_stacks_train_as_their_dequantized_weights_in_less_memory():
    """On CUDA (transformers' grouped GEMM experts): loss and LoRA gradients as the 16-bit model's holding the
    dequantized stacks, and a training step's peak lower by at least 40% of the stacks' 16-bit bytes (at rest
    they shrink to 28%; one layer's dense stacks come back for its forward; the rebuilt copies PEFT keeps for
    backward are the same in both)."""
    sizes = dict(hidden_size=1024, num_hidden_layers=4, num_experts=32, moe_intermediate_size=512)
    quantized, base = _pair("cuda", **sizes)
    stacks = sum(
        getattr(layer.mlp.experts, n).numel() * 2 for layer in base.model.layers for n in STACK_NAMES
    )
    x = torch.randint(0, 256, (2, 128), generator=torch.Generator().manual_seed(0)).cuda()
    ref, ours = with_lora(base).train(), with_lora(quantized).train()
    _same_adapters(ours, ref)

    def step(model):
        torch.cuda.reset_peak_memory_stats()
        loss, grads = loss_and_grads(model, x, x)
        return loss, grads, torch.cuda.max_memory_allocated()

    got, grads, packed_peak = step(ours)
    del ours, quantized
    torch.cuda.empty_cache()
    want, want_grads, plain_peak = step(ref.cuda())
    assert abs(got - want) / want < 1e-3
    assert max(rel_err(grads[n], want_grads[n].to(grads[n].device)) for n in want_grads) < 1e-2
    assert packed_peak < plain_peak - 0.4 * stacks, (packed_peak, plain_peak, stacks)


@pytest.mark.gpu
def test_on_a_gpu_the_fast_path_reads_4bit_stacks_a_slice_at_a_time(monkeypatch):
    """On CUDA (the grouped product once per slice, on the rows between the slices' bounds): the same loss and
    LoRA gradients as with each stack read whole, and a peak lower by most of a whole gate_up_proj in bf16."""
    from tunesmith.fast_path import experts as fast_experts
    from tunesmith.fast_path.patch import apply_fast_path

    sizes = dict(hidden_size=512, num_hidden_layers=2, num_experts=32, moe_intermediate_size=512)
    quantized, _ = _pair("cuda", **sizes)
    model = with_lora(quantized).train()
    assert apply_fast_path(model)
    x = torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(0)).cuda()

    def step():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loss, grads = loss_and_grads(model, x, x)
        return loss, grads, torch.cuda.max_memory_allocated()

    step()  # the first step's one-time allocations (workspaces) out of the comparison
    whole, whole_grads, whole_peak = step()
    monkeypatch.setattr(fast_experts, "DENSE_SLICE_BYTES", 4 * 2**20)  # 8 slices of gate_up_proj, 4 of down
    sliced, sliced_grads, sliced_peak = step()
    assert abs(sliced - whole) / whole < 1e-3
    assert max(rel_err(sliced_grads[n], whole_grads[n]) for n in whole_grads) < 1e-2
    gate_up = 32 * 2 * 512 * 512 * 2
    assert sliced_peak < whole_peak - 0.5 * gate_up, (sliced_peak, whole_peak, gate_up)
