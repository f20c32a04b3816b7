"""``tunesmith.constants``: the shared facts agree with the libraries that act on them."""

from __future__ import annotations

import torch

from tunesmith.constants import IGNORE_INDEX


def test_a_token_labelled_ignore_index_carries_no_loss_in_transformers():
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[7, IGNORE_INDEX, 3, IGNORE_INDEX]])
    # Position t predicts label t + 1: only position 1 (predicting 3) has a label that counts.
    want = torch.nn.functional.cross_entropy(logits[0, 1:2], torch.tensor([3]))
    assert torch.allclose(ForCausalLMLoss(logits, labels, vocab_size=10), want)
    assert IGNORE_INDEX == torch.nn.CrossEntropyLoss().ignore_index
