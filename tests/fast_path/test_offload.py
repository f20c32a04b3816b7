"""The memory-lean fast path on CPU: offloaded layer inputs, replayed attention, the host-kept embedding.

On a GPU these copies go to pinned memory on a side stream (``test_patch_gpu.py`` checks that against
transformers + peft); here they are plain copies, which is enough to check the autograd bookkeeping.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from _models import ODD, loss_and_grads, rel_err, tiny_model, with_lora

from tunesmith.constants import IGNORE_INDEX
from tunesmith.fast_path.checkpointing import CheckpointPlan, attention_bytes_per_token
from tunesmith.fast_path.offload import HostEmbedding
from tunesmith.fast_path.patch import apply_fast_path


def _batch(seq: int = 24):
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 97, (2, seq), generator=gen)
    labels = x.clone()
    labels[0, :5] = IGNORE_INDEX
    return x, labels


@pytest.mark.parametrize("keep_attention", [False, True], ids=["inputs-only", "with-attention"])
def test_offloaded_layers_give_the_same_loss_and_lora_gradients(keep_attention):
    model = with_lora(tiny_model(**ODD, num_hidden_layers=3)).train()
    x, labels = _batch()
    want_loss, want_grads = loss_and_grads(model, x, labels)

    assert apply_fast_path(model)
    checkpointing = model.__dict__["_tunesmith_fast_path"].checkpointing
    checkpointing.apply_plan(CheckpointPlan(3, 3, True, 0.0, 0.0), keep_attention=keep_attention)
    with mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa:
        for _ in range(2):  # the second step reuses nothing from the first
            loss, grads = loss_and_grads(model, x, labels)
            assert abs(loss - want_loss) < 1e-5
            errs = {n: rel_err(grads[n], want_grads[n]) for n in want_grads}
            assert max(errs.values()) < 1e-5, sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    # Per step: 3 layers attend in forward; the recompute attends again unless the result was kept.
    assert sdpa.call_count == 2 * (3 if keep_attention else 6)


def test_kept_attention_is_sized_for_llama_8b():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8)
    # q and output 4,096 each, k and v 1,024 each, in bf16, plus 32 float32 log-sum-exps.
    assert attention_bytes_per_token(config) == (2 * 4096 + 2 * 1024) * 2 + 32 * 4


def test_host_embedding_looks_up_rows_and_keeps_the_checkpoint_names():
    base = torch.nn.Embedding(11, 6)
    fired = []
    base.register_forward_hook(lambda m, i, o: (fired.append(1), o.requires_grad_(True))[1])
    ids = torch.tensor([[1, 4, 9]])
    want = base.weight[ids].detach().clone()
    wrapper = HostEmbedding(base)
    out = wrapper(ids)
    assert torch.equal(out, want) and out.requires_grad and fired == [1]
    assert list(wrapper.state_dict()) == ["weight"], "saved checkpoints keep the embedding's key"
    assert not list(wrapper.parameters()), "model.device follows the parameters that stay on the GPU"
    wrapper.to("meta")  # a trainer moving the model to its device: the weight stays in CPU memory
    wrapper.to(torch.float64)  # a dtype change still applies
    assert wrapper.weight.device.type == "cpu" and wrapper.weight.dtype == torch.float64
    assert torch.equal(wrapper(ids), want.double())
    assert wrapper.restore() is base
