"""One mixture-of-experts block trained alone: PEFT's own path (each adapted stack rebuilt as weight plus
update every forward) against the fast path's ``FastMoEBlock`` (LoRA per token group), same weights, same
adapters, same batch. A diagnostic beside the tutorial row (``run_tutorial.sh`` with
``BENCH_SHAPE=qwen3-30b-a3b-12l``), which times the whole model against Unsloth.

usage:  python3 bench/bench_experts.py [cpu|cuda] [TOKENS] [STEPS] [4bit]
On cuda: one Qwen3-30B-A3B layer's block (128 experts of width 768, 8 per token, hidden 2,048), bf16 stacks,
LoRA r=16 on both stacks. On cpu: a small block (32 experts of width 256, hidden 512). With ``4bit`` the stacks
are NF4 (``models/expert_stacks.py``, as ``load_in_4bit`` makes them), and the block runs twice: reading each
stack a slice of experts at a time (the default, ``DENSE_SLICE_BYTES``) and whole, which shows what the
slices' host syncs cost and the memory they save. Prints per variant the median seconds of a forward and
backward and, on cuda, the peak memory above the weights.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3MoeConfig
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

from tunesmith.fast_path import experts
from tunesmith.fast_path.experts import FastMoEBlock
from tunesmith.models.expert_stacks import quantize_expert_stacks

SIZES = {
    "cuda": dict(hidden_size=2048, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8),
    "cpu": dict(hidden_size=512, moe_intermediate_size=256, num_experts=32, num_experts_per_tok=8),
}


class _Holder(torch.nn.Module):
    """The block under the attribute name PEFT's ``target_parameters`` reach (``mlp.experts.*``)."""

    def __init__(self, block: torch.nn.Module):
        super().__init__()
        self.mlp = block

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden)


def _models(device: str, four_bit: bool) -> list[tuple[str, torch.nn.Module, float]]:
    """(name, model, bytes of a stack dequantized at one time) per variant."""
    config = Qwen3MoeConfig(norm_topk_prob=True, **SIZES[device])
    config._experts_implementation = "grouped_mm"  # what a loaded model's experts run (transformers' default)
    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(config).to(device, torch.bfloat16)
    for param in block.parameters():
        torch.nn.init.normal_(param, std=0.02)
    if four_bit:
        quantize_expert_stacks(block)
    lora = LoraConfig(r=16, lora_alpha=16, target_modules=[], target_parameters=["mlp.experts.gate_up_proj",
                                                                               "mlp.experts.down_proj"])  # fmt: skip
    peft_model = get_peft_model(_Holder(block), lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    fast = copy.deepcopy(peft_model)
    fast.base_model.model.mlp = FastMoEBlock(fast.base_model.model.mlp)
    variants = [("peft", peft_model, experts.DENSE_SLICE_BYTES), ("fast", fast, experts.DENSE_SLICE_BYTES)]
    if four_bit:
        variants.append(("fast, stacks whole", fast, float("inf")))
    return variants


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else ("cuda" if torch.cuda.is_available() else "cpu")
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 4096
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    four_bit = len(sys.argv) > 4 and sys.argv[4] == "4bit"
    hidden = SIZES[device]["hidden_size"]
    x = torch.randn(1, tokens, hidden, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    outputs = {}
    for name, model, slice_bytes in _models(device, four_bit):
        experts.DENSE_SLICE_BYTES = slice_bytes
        model.train()
        times = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        at_rest = torch.cuda.memory_allocated() if device == "cuda" else 0
        for _ in range(steps + 2):
            sync()
            start = time.perf_counter()
            out = model(x)
            out.backward(grad)
            sync()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
            x.grad = None
        outputs[name] = out.detach().float()
        extra = ""
        if device == "cuda":
            extra = (
                f", peak above the weights {(torch.cuda.max_memory_allocated() - at_rest) / 2**30:.2f} GiB"
            )
        print(
            f"{name}: {statistics.median(times[2:]):.4f} s per forward and backward ({tokens} tokens){extra}"
        )
    for name in (n for n in outputs if n != "peft"):
        gap = (outputs[name] - outputs["peft"]).norm() / outputs["peft"].norm()
        print(f"output relative difference {name} vs peft: {gap:.2e}")


if __name__ == "__main__":
    main()
