"""tunesmith's side of the training benchmark, timed exactly like the anchors' ``anchor_bench.py``.

Same random-init model folder, same LoRA (r=16, alpha=16, dropout 0, all seven projections), same
random batches, fused AdamW on the LoRA parameters, 2 warm-up steps, median of the timed steps, each
variant in its own process, peak = ``torch.cuda.max_memory_allocated()`` including the weights.

usage:  python bench/bench.py run DIR VARIANT SEQ BS STEPS     (VARIANT: ts_lora, ts_qlora, ts_qlora_lowmem, ts_lora@GB)
        python bench/bench.py probe DIR LAYERS SEQ...           (memory-lean QLoRA, one step per SEQ on a LAYERS-layer copy)
        python bench/bench.py table LOGDIR                       (the table of every RESULT line)
        python bench/bench.py peak                               (the card's bf16 matmul rate)
Environment: ARCH=1b for the Llama-3.2-1B shape; MAX_MEMORY_GB caps smart checkpointing; PROFILE=1
prints the top GPU kernels of one step.
"""

import glob
import json
import os
import sys
import time

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Lowest cap for the memory-lean QLoRA variant: every layer checkpointed, inputs offloaded to CPU.
LOWMEM_GB = 5.0


def load(d: str, variant: str):
    """The model as the anchors load it, LoRA as they add it, then tunesmith's fast path."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tunesmith.fast_path.patch import apply_fast_path

    kw = dict(dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
    if "qlora" in variant:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )  # fmt: skip
    m = AutoModelForCausalLM.from_pretrained(d, **kw)
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m = get_peft_model(
        m,
        LoraConfig(
            r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=TARGETS, task_type="CAUSAL_LM"
        ),
    )
    cap = LOWMEM_GB if variant.endswith("lowmem") else os.environ.get("MAX_MEMORY_GB")
    if "@" in variant:  # e.g. ts_lora@24: smart checkpointing with max_memory_gb=24
        cap = variant.split("@")[1]
    apply_fast_path(m, max_memory_gb=float(cap) if cap else None, offload=variant.endswith("lowmem"))
    m.train()
    return m


def _profile(m, x) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m(input_ids=x, labels=x).loss.backward()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


def run(d: str, variant: str, seq: int, bs: int, steps: int) -> None:
    """Time one variant and print its RESULT line (the anchors' loop and JSON fields, plus the plan)."""
    import torch

    vocab = json.load(open(os.path.join(d, "config.json")))["vocab_size"]
    t0 = time.time()
    m = load(d, variant)
    load_s = time.time() - t0
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    static = 0
    for i in range(steps + 2):
        x = torch.randint(3, vocab, (bs, seq), device="cuda", generator=g)
        static = torch.cuda.memory_allocated()  # weights, LoRA state, optimizer state: before the step
        torch.cuda.synchronize()
        t = time.time()
        out = m(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.time() - t)
        losses.append(round(out.loss.item(), 4))
    times.sort()
    med = times[len(times) // 2]
    state = m.__dict__.get("_tunesmith_fast_path")
    plan = state.checkpointing.last_plan if state and state.checkpointing else None
    keep_attention = bool(state and state.checkpointing and state.checkpointing.keep_attention)
    res = dict(variant=variant, seq=seq, bs=bs, steps=steps, load_s=round(load_s, 1), step_s_median=round(med, 4),
               tok_per_s=round(bs * seq / med), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
               static_gib=round(static / 2**30, 2),
               trainable=sum(p.numel() for p in params), losses=losses[:3] + losses[-2:],
               gpu=torch.cuda.get_device_name(0), plan=plan.__dict__ if plan else None,
               keep_attention=keep_attention)  # fmt: skip
    print("RESULT " + json.dumps(res), flush=True)
    if os.environ.get("PROFILE") == "1":
        _profile(m, torch.randint(3, vocab, (bs, seq), device="cuda", generator=g))


def probe(d: str, layers: int, seqs: list[int]) -> None:
    """Memory of one memory-lean QLoRA step per sequence length, on a copy of ``d`` with fewer layers.

    A layer's activations are recomputed one layer at a time and every layer input waits in CPU memory,
    so what a step adds to the GPU beyond the resting weights (``transient``) does not depend on the
    number of layers: the full model's peak at a length is its resting memory plus this transient.
    """
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    full_config = AutoConfig.from_pretrained(d)
    small = d if layers == full_config.num_hidden_layers else f"/tmp/model-probe-{layers}"
    if not os.path.exists(os.path.join(small, "config.json")):
        config = AutoConfig.from_pretrained(d)
        config.num_hidden_layers = layers
        torch.manual_seed(0)
        with torch.device("cuda"):
            LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(small)
        torch.cuda.empty_cache()
    from tunesmith.fast_path.checkpointing import keeps_attention

    m = load(small, "ts_qlora_lowmem")
    checkpointing = m.__dict__["_tunesmith_fast_path"].checkpointing
    vocab = m.config.vocab_size
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4, fused=True)
    for seq in seqs:
        x = torch.randint(3, vocab, (1, seq), device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before, t = torch.cuda.memory_allocated(), time.time()
        # Keep attention only where the full model would (host memory for all its layers).
        checkpointing._keep_attention[1, seq] = keeps_attention(
            full_config, full_config.num_hidden_layers, 1, seq
        )
        try:
            m(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            print("PROBE " + json.dumps(dict(seq=seq, layers=layers, ok=False)), flush=True)
            break
        res = dict(seq=seq, layers=layers, ok=True, step_s=round(time.time() - t, 2),
                   before_gib=round(before / 2**30, 2), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   transient_gib=round((torch.cuda.max_memory_allocated() - before) / 2**30, 2),
                   keep_attention=checkpointing.keep_attention)  # fmt: skip
        print("PROBE " + json.dumps(res), flush=True)
        del x
        torch.cuda.empty_cache()


def peak() -> None:
    """Median bf16 matmul rate on random data (8,192 cubed), in TFLOP/s."""
    import torch
    import triton.testing

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, warmup=200, rep=1000, return_mode="median")
    print("PEAK " + json.dumps({"tflops": round(2 * 8192**3 / ms / 1e9, 1)}), flush=True)


def _flops_per_token(arch: dict, seq: int) -> float:
    """Model FLOPs per trained token of LoRA without recompute: 4 x matmul params + causal attention."""
    h, i, layers, v = (
        arch["hidden_size"],
        arch["intermediate_size"],
        arch["num_hidden_layers"],
        arch["vocab_size"],
    )
    kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h
    attention = 6 * seq * h * layers  # QK^T and PV, causal half, forward + 2x backward
    return 4 * matmul + attention


def _ratio_text(r: dict, other: dict | None) -> str:
    """Speed and memory relative to another row, e.g. '1.45x / mem 0.80x'."""
    if not other:
        return "-"
    return f"{r['tok_per_s'] / other['tok_per_s']:.2f}x / mem {r['peak_gib'] / other['peak_gib']:.2f}x"


def table(logdir: str) -> None:
    """Markdown table of every RESULT line under ``logdir`` with ratios and MFU."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".anchors"))
    rows, tflops = [], None
    for path in sorted(glob.glob(os.path.join(logdir, "*.log"))):
        arch_name = "1b" if os.path.basename(path).startswith("1b-") else "8b"
        for line in open(path, errors="replace"):
            if line.startswith("RESULT "):
                rows.append((arch_name, json.loads(line[7:])))
            if line.startswith("PEAK "):
                tflops = json.loads(line[5:])["tflops"]
    os.environ["ARCH"] = ""
    import anchor_bench as ab  # the anchors' shapes, so both sides count the same FLOPs

    arch8 = dict(ab.ARCH)
    arch1 = dict(arch8, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16)
    base = {(a, r["variant"], r["seq"], r["bs"]): r for a, r in rows}
    print(f"\ncard: {rows[0][1]['gpu'] if rows else '?'}; measured bf16 matmul peak: {tflops} TFLOP/s\n")
    print("| shape | variant | batch x seq | tokens/s | peak GiB | vs Unsloth | vs transformers+peft | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for a, r in rows:
        kind = "qlora" if "qlora" in r["variant"] else "lora"  # compare like with like
        uns = base.get((a, f"unsloth_{kind}", r["seq"], r["bs"]))
        hf = base.get((a, f"hf_{kind}", r["seq"], r["bs"]))
        ratio = _ratio_text
        arch = arch1 if a == "1b" else arch8
        mfu = (
            f"{100 * r['tok_per_s'] * _flops_per_token(arch, r['seq']) / (tflops * 1e12):.0f}%"
            if tflops
            else "-"
        )
        print(
            f"| {a} | {r['variant']} | {r['bs']} x {r['seq']} | {r['tok_per_s']:,} | {r['peak_gib']} | {ratio(r, uns)} | {ratio(r, hf)} | {mfu} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    elif sys.argv[1] == "probe":
        probe(sys.argv[2], int(sys.argv[3]), [int(s) for s in sys.argv[4:]])
    elif sys.argv[1] == "peak":
        peak()
    else:
        table(sys.argv[2])
