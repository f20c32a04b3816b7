"""Decode speed: ``model.generate`` after ``for_inference``, tunesmith against Unsloth and transformers.

Each variant runs in its own process on the same random-init model (speed does not depend on the weights'
values): batch B of 64-token prompts, 256 greedy new tokens forced with ``min_new_tokens``. The first call
of the process (64 new tokens) is timed on its own: it holds any compilation or graph recording, and is what
a user waits for first. Then time to first token (batch 1, through a streamer), and the timed call.

usage (GPU machine, repository root, anchors on PYTHONPATH as in run_all.sh):
    python3 bench/bench_decode.py run MODEL_DIR VARIANT        # prints one RESULT {json} line
    python3 bench/bench_decode.py profile MODEL_DIR VARIANT    # graph replay vs loop, kernels of one step
    python3 bench/bench_decode.py lora                         # one LoRA adapter in a graph: PEFT vs kernel
    python3 bench/bench_decode.py table LOG_DIR                # the markdown table of every RESULT line
    python3 bench/bench_decode.py cpu                          # the CPU part: the embedded model, 2 cores
VARIANT: ENGINE_QUANT[_lora][_bN], ENGINE in ts, unsloth, hf, hfstatic (transformers' static cache, which
generate() compiles); QUANT in bf16, nf4. Example: ts_nf4_lora_b8.
BENCH_LABEL=L names the RESULT row L:VARIANT (run_decode.sh's base: rows, an earlier commit's code).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_TOKENS, NEW_TOKENS, FIRST_CALL_TOKENS = 64, 256, 64


def _parse(variant: str) -> dict:
    parts = variant.split("_")
    batch = next((int(p[1:]) for p in parts if p.startswith("b") and p[1:].isdigit()), 1)
    return dict(engine=parts[0], nf4="nf4" in parts, lora="lora" in parts, batch=batch)


def _load(model_dir: str, spec: dict):
    import torch

    if spec["engine"] in ("ts", "unsloth"):
        if spec["engine"] == "unsloth":
            from unsloth import FastLanguageModel
        else:
            from tunesmith import FastLanguageModel
        model, _ = FastLanguageModel.from_pretrained(
            model_dir, max_seq_length=2048, dtype=torch.bfloat16, load_in_4bit=spec["nf4"]
        )
        if spec["lora"]:
            model = FastLanguageModel.get_peft_model(
                model, r=16, target_modules=TARGETS, lora_alpha=16, lora_dropout=0, bias="none",
                use_gradient_checkpointing="unsloth", random_state=3407,
            )  # fmt: skip
        return FastLanguageModel.for_inference(model)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kw = dict(dtype=torch.bfloat16, device_map={"": 0}, attn_implementation="sdpa")
    if spec["nf4"]:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    if spec["lora"]:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS))
    return model.eval()


class _FirstToken:
    """A streamer that notes when the first new token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.puts, self.at = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.at = time.perf_counter()

    def end(self) -> None:
        pass


def run(model_dir: str, variant: str) -> None:
    """Time ``variant`` and print its RESULT line."""
    import torch

    spec = _parse(variant)
    t0 = time.perf_counter()
    model = _load(model_dir, spec)
    load_s = time.perf_counter() - t0
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (spec["batch"], PROMPT_TOKENS), generator=generator).cuda()
    extra = {"cache_implementation": "static"} if spec["engine"] == "hfstatic" else {}

    def generate(new: int, **kw):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, use_cache=True, **extra, **kw,
            )  # fmt: skip
        torch.cuda.synchronize()
        return out, time.perf_counter() - start

    _, first_call_s = generate(FIRST_CALL_TOKENS)
    ttft_s = None
    if spec["batch"] == 1:
        streamer = _FirstToken()
        start = time.perf_counter()
        generate(8, streamer=streamer)
        ttft_s = streamer.at - start if streamer.at else None
    times = []
    for _ in range(2):
        out, seconds = generate(NEW_TOKENS)
        times.append(seconds)
    new_tokens = (out.shape[1] - PROMPT_TOKENS) * spec["batch"]
    path = None
    if spec["engine"] == "ts":
        from tunesmith.generation.generate import last_generation

        record = last_generation(model)
        path = f"{record.path} {record.why}".strip()
    label = os.environ.get("BENCH_LABEL")  # run_decode.sh's base:VARIANT (an earlier commit's tunesmith)
    result = dict(
        variant=f"{label}:{variant}" if label else variant, **spec, load_s=round(load_s, 1), first_call_s=round(first_call_s, 2),
        ttft_s=round(ttft_s, 4) if ttft_s else None, tok_per_s=round(new_tokens / min(times), 1),
        decode_s=[round(t, 2) for t in times], new_tokens=new_tokens, path=path,
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), gpu=torch.cuda.get_device_name(0),
    )  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


def profile(model_dir: str, variant: str) -> None:
    """Where a decode step's time goes: the recorded graph's replay alone (CUDA events) against the whole
    loop's time per token, and the GPU kernels of one replayed step by total time (the recorded step runs
    the decode modules; an eager step would show the model's own layers)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tunesmith.generation.generate import _DECODER

    spec = _parse(variant)
    model = _load(model_dir, spec)
    ids = torch.randint(3, model.config.vocab_size, (spec["batch"], PROMPT_TOKENS)).cuda()
    call = dict(input_ids=ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    model.generate(**call)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(**call)
    torch.cuda.synchronize()
    loop_ms = (time.perf_counter() - start) * 1000 / NEW_TOKENS
    decoder = model.__dict__[_DECODER][1]
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(50):
        decoder.graph.replay()
    end.record()
    torch.cuda.synchronize()
    replay_ms = begin.elapsed_time(end) / 50
    with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.graph.replay()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = sum(e.count for e in events if e.device_type.name == "CUDA")
    print(json.dumps(dict(variant=variant, loop_ms_per_token=round(loop_ms, 3), graph_replay_ms=round(replay_ms, 3),
                          kernels_per_step=kernels)))  # fmt: skip
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))


def lora_kernels() -> None:
    """LoRA adapters (rank 16) added to a decode step's projections at Llama-8B's shapes, inside a CUDA
    graph as the recorded step runs them, in microseconds per call: one adapter by PEFT's arithmetic (the
    reference) and by the decode kernel; a layer's query, key and value adapters (gate and up) one by one
    and in one shared launch pair."""
    import torch

    from tunesmith.kernels.lora_decode import (
        lora_decode_forward,
        lora_decode_group_forward,
        lora_decode_reference,
    )

    def per_call_us(add, *args, calls: int = 32) -> float:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            for _ in range(3):
                add(*args)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                add(*args)
        graph.replay()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return round(begin.elapsed_time(end) * 1000 / 20 / calls, 2)

    def adapter(rows: int, n_in: int, n_out: int):
        y = torch.randn(rows, n_out, device="cuda", dtype=torch.bfloat16)
        return y, (
            torch.randn(16, n_in, device="cuda") / n_in**0.5,
            torch.randn(n_out, 16, device="cuda"),
            0.5,
        )

    def one_by_one(ys, x, adapters) -> None:
        for y, (a, b, s) in zip(ys, adapters, strict=True):
            lora_decode_forward(y, x, a, b, s)

    for rows in (1, 8):
        for n_in, n_out in ((4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096)):
            x = torch.randn(rows, n_in, device="cuda", dtype=torch.bfloat16)
            y, (a, b, s) = adapter(rows, n_in, n_out)
            peft = per_call_us(lora_decode_reference, y, x, a, b, s)
            kernel = per_call_us(lora_decode_forward, y, x, a, b, s)
            print(
                "RESULT "
                + json.dumps(dict(rows=rows, n_in=n_in, n_out=n_out, peft_us=peft, kernel_us=kernel))
            )
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        for name, outs in (("q,k,v", (4096, 1024, 1024)), ("gate,up", (14336, 14336))):
            ys, adapters = zip(*(adapter(rows, 4096, n) for n in outs), strict=True)
            each = per_call_us(one_by_one, ys, x, adapters)
            shared = per_call_us(lora_decode_group_forward, ys, x, adapters)
            print(
                "RESULT " + json.dumps(dict(rows=rows, adapters=name, one_by_one_us=each, shared_us=shared))
            )


def cpu() -> None:
    """The embedded model on this CPU: tunesmith's generate against transformers', 128 greedy tokens."""
    import torch

    from tunesmith import FastLanguageModel
    from tunesmith.generation.chat import prompt_ids
    from tunesmith.generation.generate import library_generate

    model, tokenizer = FastLanguageModel.from_pretrained()
    FastLanguageModel.for_inference(model)
    ids = prompt_ids(tokenizer, "What are the symptoms of anemia? Explain in detail.")
    call = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=128, min_new_tokens=128)
    rates = {}
    for name, generate in (("transformers", lambda: library_generate(model, **call, do_sample=False)),
                           ("tunesmith", lambda: model.generate(**call))):  # fmt: skip
        generate()
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            generate()
            seconds.append(time.perf_counter() - start)
        rates[name] = round(128 / min(seconds), 2)
    print("RESULT " + json.dumps(dict(cpu_threads=torch.get_num_threads(), tok_per_s=rates,
                                      ratio=round(rates["tunesmith"] / rates["transformers"], 2))))  # fmt: skip


def table(log_dir: str) -> None:
    """Every RESULT line under ``log_dir`` as one markdown table, with ratios to Unsloth's same setting."""
    rows = []
    for log in sorted(Path(log_dir).glob("*.log")):
        for line in log.read_text().splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[7:]))
    by_variant = {r["variant"]: r for r in rows}
    print("| variant | tokens/s | vs Unsloth | first call (64 tokens) s | first token s | peak GiB | path |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        anchor = by_variant.get("unsloth" + r["variant"][r["variant"].index("_") :])
        ratio = f"{r['tok_per_s'] / anchor['tok_per_s']:.2f}x" if anchor else ""
        print(f"| {r['variant']} | {r['tok_per_s']} | {ratio} | {r['first_call_s']} | {r['ttft_s']} | "
              f"{r['peak_gib']} | {r.get('path') or ''} |")  # fmt: skip


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "run":
        run(sys.argv[2], sys.argv[3])
    elif command == "profile":
        profile(sys.argv[2], sys.argv[3])
    elif command == "lora":
        lora_kernels()
    elif command == "table":
        table(sys.argv[2])
    else:
        cpu()
