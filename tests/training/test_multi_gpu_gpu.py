"""On CUDA, under ``torchrun`` (2 processes where the machine has 2 GPUs, else 1): data-parallel LoRA and
QLoRA with the fast path train one adapter on every rank; FSDP2 shards bf16 LoRA and saves the adapter in
PEFT's format; QLoRA under FSDP2 is refused with the clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import write_tiny_model

pytestmark = pytest.mark.gpu

RUNNER = Path(__file__).with_name("gpu_ranks_runner.py")


@pytest.fixture
def tiny_llama_folder(tmp_path, chatml_bpe_tokenizer):
    return write_tiny_model(tmp_path / "model", tokenizer=chatml_bpe_tokenizer, dtype=torch.bfloat16,
                            hidden_size=512, intermediate_size=1408, num_attention_heads=8,
                            max_position_embeddings=2048)  # fmt: skip


def _ranks(model_dir: Path, output: Path, mode: str) -> int:
    processes = min(2, torch.cuda.device_count())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    proc = subprocess.run([*cmd, str(RUNNER), str(model_dir), str(output), mode],
                          capture_output=True, text=True, timeout=600, env={**os.environ})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return processes


@pytest.mark.parametrize("mode", ["ddp", "qlora", "fsdp"])
def test_every_rank_trains_the_same_adapter(tiny_llama_folder, tmp_path, mode):
    from safetensors.torch import load_file

    processes = _ranks(tiny_llama_folder, tmp_path / "out", mode)
    adapters = [load_file(tmp_path / "out" / f"rank-{r}.safetensors") for r in range(processes)]
    for other in adapters[1:]:
        assert all(torch.equal(adapters[0][k], other[k]) for k in adapters[0])
    info = json.loads((tmp_path / "out" / "rank-0.json").read_text())
    assert info["fsdp"] == (mode == "fsdp")
    assert (info["sharded"] > 0) == (mode == "fsdp"), info
    assert all(isinstance(info["held_out"][k], float) for k in ("before", "after")), info
    saved = tmp_path / "out" / "adapter"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "adapter_config.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_folder, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, saved)
    mine = {n.replace(".default", ""): p for n, p in loaded.named_parameters() if "lora_" in n}
    theirs = {n.replace(".default", ""): p for n, p in adapters[0].items()}
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k].float(), theirs[k], atol=1e-2) for k in mine)


def test_qlora_under_fsdp_is_refused(tiny_llama_folder, tmp_path):
    from tunesmith.errors import TunesmithError
    from tunesmith.models.loader import load
    from tunesmith.training import SFTTrainer, TrainingArguments, get_peft_model

    model, tokenizer = load(str(tiny_llama_folder), dtype=torch.bfloat16, load_in_4bit=True)
    model = get_peft_model(model, r=8)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, fsdp=True)
    with pytest.raises(TunesmithError, match="QLoRA runs data-parallel"):
        SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=[{"text": "x"}], args=args)
