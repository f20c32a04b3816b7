"""TrainingArguments: the tutorial's precision flags work on any machine; 8-bit Adam works on CPU."""

from __future__ import annotations

import pytest
import torch
import transformers

from tunesmith.errors import TunesmithError
from tunesmith.models.device import is_bfloat16_supported
from tunesmith.training import SFTConfig, TrainingArguments
from tunesmith.training.arguments import as_tunesmith_arguments

needs_cpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU resolution")


@needs_cpu
def test_tutorial_precision_flags_resolve_on_cpu(tmp_path):
    supported = is_bfloat16_supported()
    args = TrainingArguments(output_dir=str(tmp_path), fp16=not supported, bf16=supported)
    assert args.use_cpu and args.device.type == "cpu"
    assert args.precision == ("bf16" if supported else "fp32")
    forced = TrainingArguments(output_dir=str(tmp_path), fp16=True, bf16=False)
    assert not forced.fp16  # fp16 autocast is not used on CPU
    assert TrainingArguments(output_dir=str(tmp_path), fp16=False, bf16=False).precision == "fp32"


def test_max_seq_length_is_the_tutorials_name_for_max_length(tmp_path):
    assert TrainingArguments(output_dir=str(tmp_path), max_seq_length=300).max_length == 300
    assert SFTConfig is TrainingArguments


def test_transformers_and_trl_arguments_are_accepted(tmp_path):
    plain = transformers.TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-4, max_steps=7, use_cpu=True
    )
    ours = as_tunesmith_arguments(plain, dataset_text_field="prompt_text", max_length=99)
    assert isinstance(ours, TrainingArguments)
    assert (ours.learning_rate, ours.max_steps, ours.dataset_text_field, ours.max_length) == (
        1e-4,
        7,
        "prompt_text",
        99,
    )


def test_bad_setting_is_named(tmp_path):
    with pytest.raises(TunesmithError, match="on_too_long='cut'"):
        TrainingArguments(output_dir=str(tmp_path), on_too_long="cut")


@needs_cpu
def test_eight_bit_adam_becomes_torch_adamw_on_cpu(tmp_path):
    assert TrainingArguments(output_dir=str(tmp_path), optim="adamw_8bit").optim == "adamw_torch"


def test_eight_bit_adam_runs_on_cpu_with_8bit_state():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(128, 128))  # above bitsandbytes' 4096-element 8-bit threshold
    optimizer = bnb.optim.AdamW8bit([weight], lr=0.05)
    start = float((weight.detach() ** 2).sum())
    for _ in range(20):
        (weight**2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer.state[weight]["state1"].dtype == torch.uint8
    assert float((weight.detach() ** 2).sum()) < 0.9 * start
