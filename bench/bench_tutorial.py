"""The tutorial's own training run, timed step by step: tunesmith against Unsloth and transformers + peft + TRL.

The fixed-shape loop of ``bench.py`` measures kernels; this measures what a user runs. Each variant, in
its own process, makes the reference tutorial's calls (only the import differs):
``FastLanguageModel.from_pretrained(load_in_4bit=True, max_seq_length=2048)``, ``get_peft_model(r=16,
all seven projections, use_gradient_checkpointing="unsloth")``, then ``SFTTrainer`` with batch 2,
accumulation 4, warmup 5, lr 2e-4, ``adamw_8bit``, bf16, ``packing=False``, on real rows in the tutorial's
reasoning prompt (rows of varying length) with the real Llama-3.1 tokenizer. The anchor ``hf`` is the same
flow written with transformers + peft (+ bitsandbytes NF4 with double quantization) + TRL, with
non-reentrant gradient checkpointing. tunesmith trains on the whole text here, as the other two do
(``responses_only=False``), so the three losses can be compared step by step.

usage (GPU machine, from the repository root, anchors on PYTHONPATH as in run_all.sh):
    python3 bench/random_model.py qwen3-4b MODEL_DIR                      # another family's shape
    python3 bench/bench_tutorial.py prep MODEL_DIR TOKENIZER_DIR OUT_DIR   # weights + real tokenizer
    python3 bench/bench_tutorial.py run OUT_DIR ts|unsloth|hf|hf-bf16 STEPS  # one RESULT {json} line
    python3 bench/bench_tutorial.py table LOG_DIR                          # markdown table of RESULT lines
    bash bench/run_tutorial.sh                                             # all of it, one device call
Environment: BENCH_4BIT=0 for bf16 LoRA (default 1, QLoRA); BENCH_DATA=en|zh (the shipped MedQuAD rows, or
the Chinese medical dialogues in .bench-data/medical_dialogue_zh.jsonl); BENCH_MAX_LENGTH (default 2048);
BENCH_PADDING_FREE=0|1 overrides tunesmith's own choice; BENCH_MAX_MEMORY_GB=N passes ``max_memory_gb`` to
tunesmith's get_peft_model; BENCH_PROFILE=K profiles optimizer steps K and K+1 (top kernels, host time);
BENCH_EXPORT=QUANT (tunesmith only) then times ``model.save_pretrained_gguf(dir, tokenizer, QUANT)`` and
samples the process's resident host memory while it runs.
MODEL_DIR ``embedded`` is the model tunesmith ships: the CPU part, the same flow with adamw_torch and the
precision the CPU has (bf16 autocast only with bf16 instructions), e.g.
``BENCH_MAX_LENGTH=512 python bench/bench_tutorial.py run embedded ts 4``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = {
    "en": ROOT / "tunesmith" / "assets" / "data" / "medquad_en.jsonl",
    "zh": ROOT / ".bench-data" / "medical_dialogue_zh.jsonl",
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = """Below is an instruction that describes a task, paired with an input that provides further context.
Write a response that appropriately completes the request.
Before answering, think carefully about the question and create a step-by-step chain of thoughts.

### Instruction:
You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment planning.
Please answer the following medical question.

### Question:
{}

### Response:
<think>
{}
</think>
{}"""


def prep(model_dir: str, tokenizer_dir: str, out_dir: str) -> None:
    """A model folder with ``model_dir``'s weights (linked) and the real tokenizer of ``tokenizer_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if (
            f.suffix in (".safetensors", ".json")
            and "tokenizer" not in f.name
            and f.name != "special_tokens_map.json"
        ):
            target = out / f.name
            if not target.exists():
                os.symlink(f.resolve(), target) if f.suffix == ".safetensors" else shutil.copy(f, target)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    from transformers import AutoTokenizer

    config = json.loads((out / "config.json").read_text())
    tok = json.loads((out / "tokenizer_config.json").read_text())
    real = AutoTokenizer.from_pretrained(out)  # the real tokenizer's ids (Llama 3.1: 128000, 128001)
    config["bos_token_id"], config["eos_token_id"] = real.bos_token_id, real.eos_token_id
    config.pop("pad_token_id", None)
    (out / "config.json").unlink()
    (out / "config.json").write_text(json.dumps(config))
    print(json.dumps({"prepared": str(out), "tokenizer_class": tok.get("tokenizer_class")}), flush=True)


def rows(eos: str, data: str = "en", n: int = 200) -> list[dict]:
    """The first ``n`` rows of ``data`` in the tutorial's reasoning prompt, EOS appended (the thought is the
    answer's first sentence, as the tutorial's data has one)."""
    out = []
    with DATA[data].open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            answer = row["output"]
            thought = answer.split("。" if data == "zh" else ". ")[0]
            out.append({"text": PROMPT.format(row["instruction"], thought, answer) + eos})
            if len(out) == n:
                break
    return out


def _load(variant: str, model_dir: str, four_bit: bool, cuda: bool):
    """The model with LoRA r=16 on all seven projections, as each engine's users write it."""
    import torch

    if variant in ("ts", "unsloth"):
        if variant == "unsloth":
            from unsloth import FastLanguageModel
        else:
            from tunesmith import FastLanguageModel
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_dir, max_seq_length=2048, load_in_4bit=four_bit
        )
        extra = {}
        if variant == "ts" and os.environ.get("BENCH_MAX_MEMORY_GB"):
            extra["max_memory_gb"] = float(os.environ["BENCH_MAX_MEMORY_GB"])
        model = FastLanguageModel.get_peft_model(
            model, r=16, target_modules=TARGETS, lora_alpha=16, lora_dropout=0, bias="none",
            use_gradient_checkpointing="unsloth", random_state=3407, **extra,
        )  # fmt: skip
        return model, tokenizer
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kw = dict(dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    if cuda:
        kw["device_map"] = {"": 0}
    if four_bit:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (
        four_bit and variant == "hf"
    ):  # hf-bf16 skips it: norms, embeddings and head stay 16-bit, as in Unsloth
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                      task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora), tokenizer


def _profiler(first_step: int, out_dir: Path, variant: str):
    """A callback that profiles optimizer steps ``first_step`` and the next, and writes what it saw."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == first_step:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == first_step + 1 and hasattr(self, "prof"):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                wall = time.perf_counter() - self.start
                self.prof.__exit__(None, None, None)
                averages = self.prof.key_averages()
                kernels = [e for e in self.prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                busy = sum(e.device_time for e in kernels) / 1e6 if kernels else 0.0
                text = [
                    f"PROFILE {variant}: 2 optimizer steps, wall {wall:.3f} s, GPU kernels {len(kernels)}, "
                    f"kernel time {busy:.3f} s ({100 * busy / wall:.0f}% of wall)",
                    averages.table(sort_by="self_device_time_total", row_limit=30),
                    averages.table(sort_by="self_cpu_time_total", row_limit=30),
                ]
                (out_dir / f"profile-{variant}.txt").write_text("\n".join(text))
                print(text[0], flush=True)

    return Profile()


def _resident_gb() -> float:
    """This process's resident host memory now, in GB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def export_gguf(model, tokenizer, quant: str) -> dict:
    """Time the tutorial's ``save_pretrained_gguf`` after training: wall seconds, file size, and the
    resident host memory before and at its highest (sampled every 0.1 s) while it ran."""
    import threading

    before, peak, done = _resident_gb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _resident_gb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    path = model.save_pretrained_gguf(
        "/tmp/tutorial-export", tokenizer, quantization_method=quant, overwrite=True
    )
    export_s = time.perf_counter() - t0
    done.set()
    sampler.join()
    return dict(export_quant=quant, export_s=round(export_s, 1), gguf_gb=round(Path(path).stat().st_size / 1e9, 2),
                host_gb_before_export=round(before, 2), host_gb_peak_export=round(max(peak[0], before), 2))  # fmt: skip


def run(model_dir: str, variant: str, steps: int) -> None:
    """Time the tutorial's calls for ``variant`` (``ts``, ``unsloth``, ``hf`` or ``hf-bf16``: transformers + peft
    without the k-bit recipe's float32 upcast) and print the RESULT line."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()  # False for the CPU part (the embedded model)
    if variant == "unsloth":
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    if variant == "ts":
        from tunesmith import SFTTrainer, TrainingArguments
    else:
        from trl import SFTConfig, SFTTrainer

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    four_bit = cuda and os.environ.get("BENCH_4BIT", "1") == "1"
    data = os.environ.get("BENCH_DATA", "en")
    if model_dir == "embedded":  # the CPU part: the model tunesmith ships, as a transformers folder
        from tunesmith.models.registry import DEFAULT_MODEL
        from tunesmith.models.sources import materialize

        model_dir = str(materialize(DEFAULT_MODEL))
    t0 = time.perf_counter()
    model, tokenizer = _load(variant, model_dir, four_bit, cuda)
    load_s = time.perf_counter() - t0
    dataset = Dataset.from_list(rows(tokenizer.eos_token, data))
    common = dict(
        per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=5, max_steps=steps,
        learning_rate=2e-4, bf16=True, logging_steps=1, optim="adamw_8bit" if cuda else "adamw_torch",
        weight_decay=0.01, lr_scheduler_type="linear", seed=3407, output_dir=f"/tmp/tutorial-{variant}",
        report_to="none", save_strategy="no", include_num_input_tokens_seen="non_padding",
    )  # fmt: skip
    max_length = int(os.environ.get("BENCH_MAX_LENGTH", "2048"))
    if not cuda:  # bf16 autocast where the CPU has bf16 instructions (emulated, it is ~20x slower), as
        # tunesmith resolves bf16=True; transformers' own arguments refuse bf16 without a GPU unless use_cpu
        from tunesmith.models.device import cpu_has_bf16

        common.update(use_cpu=True, bf16=cpu_has_bf16())

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.times.append(round(time.perf_counter() - self.start, 3))

    timer = StepTimes()
    if variant == "ts":  # the tutorial's own argument names
        if os.environ.get("BENCH_PADDING_FREE") in ("0", "1"):  # default: tunesmith decides
            common["padding_free"] = os.environ["BENCH_PADDING_FREE"] == "1"
        trainer = SFTTrainer(
            model=model, tokenizer=tokenizer, train_dataset=dataset, dataset_text_field="text",
            max_seq_length=max_length, packing=False, responses_only=False, args=TrainingArguments(**common),
        )  # fmt: skip
    else:
        extra = {} if variant == "unsloth" else {"gradient_checkpointing": True,
                                                 "gradient_checkpointing_kwargs": {"use_reentrant": False}}  # fmt: skip
        args = SFTConfig(dataset_text_field="text", max_length=max_length, packing=False, **common, **extra)
        trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=dataset, args=args)
    trainer.add_callback(timer)
    if os.environ.get("BENCH_PROFILE"):
        out_dir = Path(os.environ.get("OUT", "/tmp"))
        trainer.add_callback(_profiler(int(os.environ["BENCH_PROFILE"]), out_dir, variant))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t1
    tokens = int(trainer.state.num_input_tokens_seen)
    later = sorted(timer.times[3:]) or timer.times
    result = dict(
        variant=variant, bits=4 if four_bit else 16, data=data, steps=steps, load_s=round(load_s, 1),
        train_s=round(train_s, 1), step_s=timer.times, step_s_median=statistics.median(later),
        step_s_p90=later[min(len(later) - 1, int(0.9 * len(later)))], real_tokens=tokens,
        real_tok_per_s=round(tokens / train_s),
        loss=[round(r["loss"], 4) for r in trainer.state.log_history if "loss" in r],
        peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        padding_free=bool(getattr(trainer.args, "padding_free", False)),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        max_memory_gb=os.environ.get("BENCH_MAX_MEMORY_GB") or None, gpu=torch.cuda.get_device_name(0) if cuda else "cpu",
    )  # fmt: skip
    if variant == "ts" and os.environ.get("BENCH_EXPORT"):
        try:  # the training numbers are printed whatever the export does
            result.update(export_gguf(model, tokenizer, os.environ["BENCH_EXPORT"]))
        except Exception as error:  # noqa: BLE001
            result["export_error"] = f"{type(error).__name__}: {error}"
    print("RESULT " + json.dumps(result), flush=True)


def _ratio(anchor: dict | None, result: dict) -> str:
    """How many times faster ``result``'s trainer.train() ran than ``anchor``'s."""
    return f"{anchor['train_s'] / result['train_s']:.2f}x" if anchor else ""


def table(log_dir: str) -> None:
    """Every RESULT line under ``log_dir`` as a markdown table, wall time compared with Unsloth's and
    transformers + peft's same setting, and each loss curve's largest gap to transformers + peft's."""
    results = []
    for log in sorted(Path(log_dir).glob("*.log")):
        results += [json.loads(x[7:]) for x in log.read_text().splitlines() if x.startswith("RESULT ")]
    key = lambda r: (r["bits"], r["data"], r["steps"], r.get("max_memory_gb"))  # noqa: E731
    anchors = {(r["variant"], *key(r)): r for r in results}
    print("| variant | bits | data | train() s | real tokens/s | step median (4+) | p90 / median | peak GiB "
          "| wall vs Unsloth | wall vs hf | max loss gap to hf | LoRA parameters |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        base = (r["bits"], r["data"], r["steps"], None)
        unsloth, hf = anchors.get(("unsloth", *base)), anchors.get(("hf", *base))
        gap = ""
        if hf and hf is not r and hf["loss"] and r["loss"]:
            gap = f"{max(abs(a - b) / b for a, b in zip(r['loss'], hf['loss'], strict=False)):.2%}"
        name = r["variant"] + (" padded" if r["variant"] == "ts" and not r.get("padding_free") else "")
        name += f" (max_memory_gb={r['max_memory_gb']})" if r.get("max_memory_gb") else ""
        print(f"| {name} | {r['bits']} | {r['data']} | {r['train_s']} | {r['real_tok_per_s']} | "
              f"{r['step_s_median']} | {r['step_s_p90'] / r['step_s_median']:.2f} | {r['peak_gib']} | "
              f"{_ratio(unsloth, r)} | {_ratio(hf, r)} | {gap} | {r.get('trainable', 0) / 1e6:.1f}M |")  # fmt: skip
    for r in (r for r in results if "export_s" in r):
        print(f"\nExport after training ({r['bits']}-bit, {r['data']}): save_pretrained_gguf {r['export_quant']} "
              f"{r['export_s']} s, {r['gguf_gb']} GB file, host memory {r['host_gb_before_export']} GB before, "
              f"{r['host_gb_peak_export']} GB at its peak.")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1] == "prep":
        prep(*sys.argv[2:5])
    elif sys.argv[1] == "table":
        table(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
