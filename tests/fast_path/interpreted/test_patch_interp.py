"""The whole fast path on a tiny Llama with every Triton kernel running (interpreted): same loss, same grads."""

from __future__ import annotations

import pytest
import torch
from _models import ODD, loss_and_grads, rel_err, tiny_model, with_lora

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path.patch import apply_fast_path, unpatch


def _graph_ops(loss) -> set[str]:
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack += [nxt for nxt, _ in fn.next_functions]
    return {type(fn).__name__ for fn in seen}


def test_patched_model_runs_every_kernel_and_matches_plain_model():
    model = with_lora(tiny_model(**ODD)).train()
    x = torch.randint(0, 97, (2, 11))
    labels = x.clone()
    labels[0, :3] = IGNORE_INDEX
    loss0, grads0 = loss_and_grads(model, x, labels)
    assert apply_fast_path(model)
    out = model(input_ids=x, labels=labels)
    ops = _graph_ops(out.loss)
    for fn in (
        "RMSNormFunction",
        "RoPEFunction",
        "LoRAProjectionsFunction",
        "LoRAMLPFunction",
        "FusedLinearCrossEntropyFunction",
    ):
        assert fn + "Backward" in ops, fn
    loss1, grads1 = loss_and_grads(model, x, labels)
    assert abs(loss1 - loss0) < 1e-5
    assert max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5
    unpatch(model)


def test_packed_row_through_the_kernels_matches_separate_samples():
    from tunesmith.fast_path.packing import pack_without_padding

    samples = [[5, 17, 3, 88, 41, 9, 60], [12, 7, 33, 2, 71]]
    model = with_lora(tiny_model(**ODD)).train()
    want = (
        sum(
            model(input_ids=torch.tensor(s)[None], labels=torch.tensor(s)[None]).loss * (len(s) - 1)
            for s in samples
        )
        / 10
    )
    apply_fast_path(model)
    got = model(**pack_without_padding(samples)).loss
    assert abs(got.item() - want.item()) < 1e-5


def test_checkpointed_layers_recompute_through_the_kernels_with_the_same_gradients():
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    model = with_lora(tiny_model(**ODD)).train()
    x = torch.randint(0, 97, (2, 9))
    apply_fast_path(model)
    loss0, grads0 = loss_and_grads(model, x, x)
    for (
        layer
    ) in model.get_base_model().model.layers:  # what smart checkpointing sets for a tight budget on CUDA
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    loss1, grads1 = loss_and_grads(model, x, x)
    assert abs(loss1 - loss0) < 1e-6
    assert max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-6


# Gemma 3: offset norms, GeGLU inside the fused LoRA MLP, a local layer; Phi-3: its fused qkv and gate-up
# projections as single LoRA projections, then the SwiGLU kernel; Qwen3-MoE: attention and norms fused.
FAMILY_KERNELS = {
    "gemma3_text": (
        dict(
            head_dim=16,
            query_pre_attn_scalar=12,
            sliding_window=32,
            layer_types=["sliding_attention", "full_attention"],
        ),
        "LoRAMLPFunction",
    ),
    "phi3": ({}, "SwiGLUFunction"),
    "qwen3_moe": (dict(head_dim=16), None),  # its experts stay on transformers' grouped matrix product
}


@pytest.mark.parametrize("family", list(FAMILY_KERNELS))
def test_other_families_run_their_kernels_and_match_the_plain_model(family):
    config, mlp_function = FAMILY_KERNELS[family]
    model = with_lora(tiny_model(family, **ODD, **config)).train()
    x = torch.randint(0, 97, (2, 11))
    loss0, grads0 = loss_and_grads(model, x, x)
    assert apply_fast_path(model)
    ops = _graph_ops(model(input_ids=x, labels=x).loss)
    for fn in ("RMSNormFunction", "RoPEFunction", "LoRAProjectionsFunction", mlp_function,
               "FusedLinearCrossEntropyFunction"):  # fmt: skip
        assert fn is None or fn + "Backward" in ops, fn
    loss1, grads1 = loss_and_grads(model, x, x)
    assert abs(loss1 - loss0) < 1e-5
    assert max(rel_err(grads1[n], grads0[n]) for n in grads0) < 1e-5
    unpatch(model)
