"""DPO and GRPO step time, tunesmith against Unsloth's patched TRL trainers, on the Llama-3.1-8B shape.

Same random-init model folder as ``bench.py`` (``anchor_bench.py prep``), same LoRA (r=16, alpha=16, dropout 0,
all seven projections), bf16, the same synthetic data on both sides, 2 warm-up steps (1 for GRPO), median of
the timed steps, each variant in its own process, peak = ``torch.cuda.max_memory_allocated()``.

- ``ts_dpo``: ``tunesmith.FastLanguageModel`` + ``tunesmith.DPOTrainer``;
  ``unsloth_dpo``: Unsloth's ``FastLanguageModel`` + ``PatchDPOTrainer()`` + TRL's ``DPOTrainer``.
- ``ts_grpo``: ``tunesmith.GRPOTrainer``; ``unsloth_grpo``: Unsloth's ``FastLanguageModel`` + TRL's
  ``GRPOTrainer``; ``hf_grpo``: transformers + peft (non-reentrant checkpointing) + TRL's ``GRPOTrainer``; all
  generate with the model's own ``generate`` (``use_vllm=False``), LoRA unmerged.
  A step includes its generation; ``gen_tok_per_s`` is one timed sampling call of the same shape afterwards.

usage:  python bench/bench_pref.py run DIR VARIANT [STEPS]      (one variant; prints its RESULT line)
        python bench/bench_pref.py all DIR [VARIANT...]         (each variant in its own process, then ratios)
Environment: SEQ (DPO prompt + answer tokens, default 1024), BS (DPO pairs per step, default 4),
GEN (GRPO completion tokens, default 256), GROUP (GRPO completions per prompt, default 8),
BENCH_STEP_PROFILE=N (kernels and host ops of optimizer step N), BENCH_SAMPLING_PROFILE=1 (kernels of one
replay of tunesmith's sampling graph).
"""

import json
import os
import subprocess
import sys
import time

VARIANTS = ["ts_dpo", "unsloth_dpo", "ts_grpo", "unsloth_grpo", "hf_grpo"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEQ, BS = int(os.environ.get("SEQ", 1024)), int(os.environ.get("BS", 4))
GEN, GROUP = int(os.environ.get("GEN", 256)), int(os.environ.get("GROUP", 8))
WORDS = (
    "the patient reports fatigue and headache blood test thyroid vitamin sleep stress anemia doctor".split()
)


def _text(rng, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def data(method: str, rows: int = 64):
    """Synthetic rows, the same for both sides: DPO pairs (~SEQ tokens) or GRPO prompts (~128 tokens)."""
    import random

    import datasets

    rng = random.Random(0)
    if method == "dpo":
        half = SEQ // 3  # words are ~1 token each with the prep tokenizer; prompt 1/3, answer 2/3
        pairs = [{"prompt": _text(rng, half), "chosen": _text(rng, 2 * half), "rejected": _text(rng, 2 * half)}
                 for _ in range(rows)]  # fmt: skip
        return datasets.Dataset.from_list(pairs)
    return datasets.Dataset.from_list([{"prompt": _text(rng, 128)} for _ in range(rows)])


SCORED = [0]  # completions scored so far: Unsloth raises the accumulation on its own, so steps differ in size


def distinct_words(prompts, completions, **kwargs) -> list[float]:
    """A cheap reward with spread inside each group (so every group has a gradient)."""
    SCORED[0] += len(completions)
    return [len(set(str(c).split())) / 50 for c in completions]


def load(d: str, variant: str):
    """(model, tokenizer) with LoRA, as each side's users load them."""
    import torch

    if variant.startswith("hf"):
        return _load_hf(d)
    if variant.startswith("unsloth"):
        from unsloth import FastLanguageModel
    else:
        from tunesmith import FastLanguageModel
    # GRPO: a 128-word prompt is ~141 tokens with the real tokenizer; Unsloth truncates past max_seq_length
    # and then indexes out of bounds (its GRPO run failed at 128 + GEN)
    length = SEQ if variant.endswith("dpo") else 256 + GEN
    m, tok = FastLanguageModel.from_pretrained(
        d, max_seq_length=length, dtype=torch.bfloat16, load_in_4bit=False
    )
    m = FastLanguageModel.get_peft_model(m, r=16, target_modules=TARGETS, lora_alpha=16, lora_dropout=0,
                                         bias="none", use_gradient_checkpointing="unsloth", random_state=3407)  # fmt: skip
    return m, tok


def _load_hf(d: str):
    """transformers + peft as the anchors set them up: bf16, the same LoRA, non-reentrant checkpointing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(d)
    tok.pad_token = tok.pad_token or tok.eos_token
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda()
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.enable_input_require_grads()
    config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(m, config), tok


def trainer(variant: str, m, tok, steps: int):
    """The trainer of ``variant`` with the same settings on both sides."""
    common = dict(output_dir=f"/tmp/bench-pref-{variant}", max_steps=steps, logging_steps=1, save_strategy="no",
                  report_to="none", bf16=True, learning_rate=5e-5, warmup_steps=0, seed=3407)  # fmt: skip
    if variant == "ts_dpo":
        import tunesmith

        args = tunesmith.DPOConfig(**common, per_device_train_batch_size=BS, max_length=SEQ, beta=0.1)
        return tunesmith.DPOTrainer(model=m, tokenizer=tok, train_dataset=data("dpo"), args=args)
    if variant == "unsloth_dpo":
        from unsloth import PatchDPOTrainer

        PatchDPOTrainer()
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, per_device_train_batch_size=BS, max_length=SEQ, beta=0.1)
        return DPOTrainer(model=m, processing_class=tok, train_dataset=data("dpo"), args=args)
    grpo = dict(per_device_train_batch_size=GROUP, num_generations=GROUP, max_completion_length=GEN, beta=0.0,
                use_vllm=False, temperature=1.0)  # fmt: skip
    if variant == "ts_grpo":
        import tunesmith

        args = tunesmith.GRPOConfig(**common, **grpo)
        return tunesmith.GRPOTrainer(model=m, tokenizer=tok, reward_funcs=[distinct_words],
                                     train_dataset=data("grpo"), args=args)  # fmt: skip
    from trl import GRPOConfig, GRPOTrainer

    return GRPOTrainer(model=m, processing_class=tok, reward_funcs=[distinct_words], train_dataset=data("grpo"),
                       args=GRPOConfig(**common, **grpo))  # fmt: skip


def _step_timer(model, ours: bool):
    import torch
    from transformers import TrainerCallback

    profiled = int(os.environ.get("BENCH_STEP_PROFILE", "0"))

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (CUDA synchronised at both ends), the sampling call's share of
        it (tunesmith), and with BENCH_STEP_PROFILE=N a profile of step N."""

        def __init__(self):
            self.times, self.scored, self.sampling, self._t, self._prof = [], [], [], None, None

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            if state.global_step + 1 == profiled:
                from torch.profiler import ProfilerActivity, profile

                self._prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self._prof.__enter__()
            self._t = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.time() - self._t)
            self.scored.append(SCORED[0])
            if self._prof is not None:
                self._prof.__exit__(None, None, None)
                _print_step_profile(self._prof, self.times[-1])
                self._prof = None
            if ours:
                from tunesmith.generation.generate import last_generation

                record = last_generation(model)
                self.sampling.append(round(record.seconds, 3) if record is not None else None)

    return StepTimer()


def _print_step_profile(prof, wall: float) -> None:
    """Where one optimizer step went: GPU busy time against the wall, the top kernels and host ops."""
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    print(f"STEP_PROFILE wall {wall:.3f} s, GPU kernels {busy:.3f} s ({100 * busy / wall:.0f}%)", flush=True)
    print(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70), flush=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70), flush=True)


def gen_rate(m, tok) -> float:
    """Sampling tokens/s of one GRPO-shaped call: GROUP completions of GEN tokens after a 128-token prompt."""
    import torch

    x = torch.randint(3, len(tok), (GROUP, 128), device="cuda")
    kw = dict(
        do_sample=True, temperature=1.0, max_new_tokens=GEN, min_new_tokens=GEN, pad_token_id=tok.pad_token_id
    )
    torch.cuda.synchronize()
    t = time.time()
    m.generate(input_ids=x, attention_mask=torch.ones_like(x), **kw)
    torch.cuda.synchronize()
    return GROUP * GEN / (time.time() - t)


def _profile_sampling_step(m) -> None:
    """The GPU kernels of one replay of the sampling step's recorded graph, as GRPO left it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunesmith.generation.generate import _DECODER

    held = m.__dict__.get(_DECODER)
    if held is None:  # the trainer freed it when training ended; gen_rate's call records a new one
        print("SAMPLING_PROFILE: no held decoder (freed after training)", flush=True)
        return
    decoder = held[1]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        decoder.graph.replay()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


def _cpu_name() -> str:
    """The host's CPU model (hosts differ, and the step is partly bound by the host)."""
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")


def run(d: str, variant: str, steps: int) -> None:
    """Time one variant and print its RESULT line."""
    import torch

    t0 = time.time()
    if variant.startswith("unsloth"):
        import unsloth  # noqa: F401  (first, so that it patches transformers and TRL)
    m, tok = load(d, variant)
    tr = trainer(variant, m, tok, steps)
    timer = _step_timer(m, variant.startswith("ts"))
    tr.add_callback(timer)
    load_s = time.time() - t0
    torch.cuda.reset_peak_memory_stats()
    tr.train()
    warm = 1 if variant.endswith("grpo") else 2
    timed = sorted(timer.times[warm:])
    med = timed[len(timed) // 2]
    res = dict(variant=variant, steps=steps, load_s=round(load_s, 1), step_s_median=round(med, 3),
               steps_per_min=round(60 / med, 2), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
               losses=[round(r["loss"], 4) for r in tr.state.log_history if "loss" in r][-3:],
               gpu=torch.cuda.get_device_name(0), cpu=_cpu_name())  # fmt: skip
    if variant.endswith("dpo"):
        res.update(seq=SEQ, bs=BS, tok_per_s=round(2 * BS * SEQ / med))  # chosen and rejected rows
    else:
        done = [b - a for a, b in zip([0, *timer.scored[:-1]], timer.scored, strict=True)][warm:]
        per_step = sorted(done)[len(done) // 2]
        if variant.startswith("ts"):  # the last step's sampling call, before gen_rate makes another
            import tunesmith
            from tunesmith.generation.generate import last_generation

            res.update(code=os.path.dirname(tunesmith.__file__))

            record = last_generation(m)
            if record is not None:
                res.update(sampling_path=record.path, sampling_why=record.why, sampling_s=timer.sampling)
            if os.environ.get("BENCH_SAMPLING_PROFILE"):
                _profile_sampling_step(m)
        res.update(group=GROUP, gen_tokens=GEN, completions_per_step=per_step,
                   completions_per_min=round(60 * per_step / med, 1), gen_tok_per_s=round(gen_rate(m, tok)))  # fmt: skip
    print("RESULT " + json.dumps(res), flush=True)


def all_variants(d: str, variants: list[str]) -> None:
    """Each variant in its own process (a clean GPU each), then the ratios tunesmith / Unsloth."""
    if not os.path.exists(os.path.join(d, "config.json")):
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(
            [sys.executable, os.path.join(here, "..", ".anchors", "anchor_bench.py"), "prep", d], check=True
        )
    results = {}
    for v in variants:
        steps = "6" if v.endswith("grpo") else "8"
        proc = subprocess.run([sys.executable, __file__, "run", d, v, steps], capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        print(lines[-1] if lines else f"FAILED {v} rc={proc.returncode}\n{proc.stderr[-3000:]}", flush=True)
        if lines:
            results[v] = json.loads(lines[-1][7:])
    for method in ("dpo", "grpo"):
        ours, theirs = results.get(f"ts_{method}"), results.get(f"unsloth_{method}")
        if ours and theirs:
            ratio = {"method": method, "speedup_per_step": round(theirs["step_s_median"] / ours["step_s_median"], 2),
                     "memory_ratio": round(ours["peak_gib"] / theirs["peak_gib"], 2)}  # fmt: skip
            if method == "grpo":  # per completion: the steps of the two sides may hold different numbers
                ratio["speedup_per_completion"] = round(
                    ours["completions_per_min"] / theirs["completions_per_min"], 2
                )
                ratio["gen_tok_per_s_ratio"] = round(ours["gen_tok_per_s"] / theirs["gen_tok_per_s"], 2)
            print("RATIO " + json.dumps(ratio), flush=True)


if __name__ == "__main__":
    # appended, not put first: a tunesmith on PYTHONPATH (an earlier commit's, for a baseline) must win
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 8)
    else:
        all_variants(sys.argv[2], sys.argv[3:] or VARIANTS)
