"""``run(config)``: the reference tutorial's whole flow, as one function that reads top to bottom.

check -> load -> ask the probes -> data -> LoRA + held-out loss -> train -> held-out loss -> ask again
-> export -> verify -> report. Each stage is a named function below, in run order; each prints one
headed line and records what it found in the output folder's state file, so a failed or interrupted
run keeps its results and the same command resumes it (finished stages are not repeated; training
continues from its last checkpoint).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.errors import TunesmithError
from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.context import LOSS_PNG, TRAINING_DIR, RunContext, model_name
from tunesmith.recipe.datacheck import check_data
from tunesmith.recipe.report import ExportFile, ProbeAnswer, write_report
from tunesmith.recipe.state import config_fingerprint, open_output_folder
from tunesmith.recipe.summary import report_data

__all__ = ["run", "dry_run", "RunResult", "RunContext"]


@dataclass
class RunResult:
    """What a run produced (paths are inside ``folder``)."""

    folder: Path
    finished: bool
    status: str
    report_md: Path | None = None
    report_html: Path | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    probes: list[ProbeAnswer] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    verification: dict[str, Any] | None = None


def run(config: RunConfig) -> RunResult:
    """Fine-tune, compare, export, verify and report, as ``config`` says (see the module docstring)."""
    state = open_output_folder(
        Path(config.output.folder), config_fingerprint(_json(config)), config.output.overwrite
    )
    ctx = RunContext(config=config, state=state, stage_count=11)
    if state.resumed:
        print(
            f"Resuming the unfinished run in {ctx.folder} (finished stages: {', '.join(state.completed) or 'none'})."
        )
    ctx.stage("check", "Checking the environment and the data file", check_environment)
    ctx.stage("load", f"Loading the base model {config.model.name}", load_base_model)
    ctx.stage("probes_before", "Asking the probe questions before training", probe_before, once=True)
    ctx.stage("data", "Loading and formatting the data", prepare_data)
    ctx.stage("lora", "Adding LoRA adapters and measuring the held-out loss", add_lora)
    ctx.stage("train", f"Training for {config.training.max_steps} steps", train)
    if ctx.interrupted:
        return _interrupted(ctx)
    ctx.stage("eval_after", "Measuring the held-out loss after training", eval_after, once=True)
    ctx.stage("probes_after", "Asking the probe questions after training", probe_after, once=True)
    ctx.stage("export", "Exporting " + ", ".join(config.export.formats), export, once=True)
    ctx.stage("verify", "Verifying the GGUF in llama.cpp", verify, once=True)
    ctx.stage("report", "Writing the report", report)
    if _verification_could_not_run(ctx):
        return _unverified(ctx)
    return _result(ctx, finished=True, status="finished")


def dry_run(config: RunConfig) -> None:
    """Check the config and the data (no model is loaded, nothing is written); raise on a problem."""
    summary = check_data(config)
    print(f"Config OK. Data OK: {summary}.")
    print(f"A run would write to {Path(config.output.folder).resolve()}.")


# -- the stages, in run order ----------------------------------------------------------------------------


def check_environment(ctx: RunContext) -> dict[str, str]:
    """Versions, device and precision; the data file is read and checked before any model loads."""
    env = _environment()
    if ctx.config.export.verify and "gguf" in ctx.config.export.formats:
        _require_llama_cpp()
        _warn_if_llama_cpp_fails(env.get("llama.cpp verification", ""))
    summary = check_data(ctx.config)
    print(f"    {env.get('device', '?')}; torch {env.get('torch', '?')}; data: {summary}")
    return env


def load_base_model(ctx: RunContext) -> None:
    """Load the model and tokenizer, and give the tokenizer the prompt format the data will use."""
    from tunesmith.data import get_chat_template
    from tunesmith.models.loader import load

    m = ctx.config.model
    ctx.model, ctx.tokenizer = load(
        m.name,
        max_seq_length=m.max_seq_length,
        dtype=None if m.dtype == "auto" else m.dtype,
        load_in_4bit=m.load_in_4bit,
        load_in_8bit=m.load_in_8bit,
        trust_remote_code=m.trust_remote_code,
    )
    template = _template(ctx.config)
    if isinstance(template, PromptTemplate):
        ctx.tokenizer.chat_template = template.to_chat_template()  # probes, training and export share it
    elif template is not None:
        get_chat_template(ctx.tokenizer, template)


def probe_before(ctx: RunContext) -> list[str]:
    """Greedy answers of the base model (the same prompt format the fine-tuned model will see)."""
    return _ask(ctx)


def prepare_data(ctx: RunContext) -> dict[str, Any]:
    """Read, validate, format and tokenize the data; split off the held-out rows."""
    from tunesmith.data import prepare_dataset

    d = ctx.config.data
    ctx.prepared = prepare_dataset(
        d.file,
        ctx.tokenizer,
        template=_template(ctx.config),
        fields=d.fields,
        max_seq_length=ctx.config.model.max_seq_length,
        on_too_long=d.too_long,
        duplicates=d.duplicates,
        eval_split=d.eval_file or (d.eval_split or None),
        responses_only=d.train_on_responses_only,
        encoding=d.encoding,
        limit=d.max_rows,
        seed=ctx.config.training.seed,
    )
    stats = ctx.prepared.stats
    print(f"    {stats.summary()}")
    return stats.to_dict()


def add_lora(ctx: RunContext) -> dict[str, float | None]:
    """Wrap the model in LoRA adapters, build the trainer and measure the held-out loss before training."""
    from tunesmith.training.lora import get_peft_model

    lo = ctx.config.lora
    ctx.model = get_peft_model(
        ctx.model,
        r=lo.r,
        target_modules=lo.target_modules,
        lora_alpha=lo.lora_alpha,
        lora_dropout=lo.lora_dropout,
        bias=lo.bias,
        use_gradient_checkpointing=lo.use_gradient_checkpointing,
        max_memory_gb=lo.max_memory_gb,
        random_state=lo.random_state,
        use_rslora=lo.use_rslora,
    )
    ctx.trainer = _build_trainer(ctx)
    earlier = ctx.state.results.get("lora") or {}
    if "eval_loss_before" in earlier:  # measured before the interruption, on the untrained adapters
        return earlier
    loss = _eval_loss(ctx)
    print(f"    held-out loss before training: {_fmt(loss)}")
    return {"eval_loss_before": loss}


def train(ctx: RunContext) -> dict[str, Any]:
    """Train with a progress bar; Ctrl-C stops after a checkpoint; a re-run resumes from the last one."""
    from tunesmith.training.interrupt import StopOnInterrupt, graceful_interrupt

    stopper = StopOnInterrupt()
    ctx.trainer.add_callback(stopper)
    checkpoint = _last_checkpoint(ctx)
    if checkpoint is not None:
        print(f"    resuming from {checkpoint.relative_to(ctx.folder)}")
    with graceful_interrupt(stopper):
        ctx.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    ctx.interrupted = stopper.requested and ctx.trainer.state.global_step < ctx.config.training.max_steps
    return {"losses": _train_losses(ctx), "steps": ctx.trainer.state.global_step}


def eval_after(ctx: RunContext) -> dict[str, float | None]:
    """The held-out loss after training (the same rows as before), added to the loss curve."""
    from tunesmith.training.callbacks import LOG_NAME
    from tunesmith.training.plot import plot_loss_curve, read_log

    loss = _eval_loss(ctx)
    before = ctx.state.results.get("lora", {}).get("eval_loss_before")
    print(f"    held-out loss: {_fmt(before)} before -> {_fmt(loss)} after")
    records = [r for r in read_log(ctx.folder / TRAINING_DIR / LOG_NAME) if "eval_loss" not in r]
    held_out = [(0, before), (ctx.trainer.state.global_step, loss)]
    records += [{"step": step, "eval_loss": value} for step, value in held_out if value is not None]
    plot_loss_curve(records, ctx.folder / LOSS_PNG)
    return {"eval_loss_after": loss}


def probe_after(ctx: RunContext) -> list[str]:
    """Greedy answers of the fine-tuned model to the same questions."""
    return _ask(ctx)


def export(ctx: RunContext) -> dict[str, Any]:
    """Write the configured formats: GGUF (+ Ollama Modelfile), merged 16-bit folder, LoRA adapter."""
    from tunesmith.export.gguf import save_pretrained_gguf
    from tunesmith.export.merge import save_pretrained_merged
    from tunesmith.export.ollama import MODELFILE_NAME

    ex, out = ctx.config.export, {}
    # overwrite=True: these folders belong to this run (a resumed export replaces its own partial output)
    if "lora" in ex.formats:
        save_pretrained_merged(
            ctx.model, ctx.folder / "lora", ctx.tokenizer, save_method="lora", overwrite=True
        )
        out["lora"] = "lora"
    if "merged" in ex.formats:
        save_pretrained_merged(
            ctx.model, ctx.folder / "merged", ctx.tokenizer, save_method="merged_16bit", overwrite=True
        )
        out["merged"] = "merged"
    if "gguf" in ex.formats:
        gguf = save_pretrained_gguf(
            ctx.model,
            ctx.folder / "gguf",
            ctx.tokenizer,
            quantization_method=ex.quant,
            name=model_name(ctx),
            modelfile=ex.modelfile,
            overwrite=True,
        )
        out["gguf"] = gguf.relative_to(ctx.folder).as_posix()
        if ex.modelfile:
            out["modelfile"] = (gguf.parent / MODELFILE_NAME).relative_to(ctx.folder).as_posix()
    for kind, rel in out.items():
        print(f"    {kind}: {rel}")
    return out


def verify(ctx: RunContext) -> dict[str, Any] | None:
    """Load the GGUF in llama.cpp and compare tokens and next-token choices with the PyTorch model."""
    gguf = (ctx.state.results.get("export") or {}).get("gguf")
    if not (ctx.config.export.verify and gguf):
        print("    skipped (no GGUF, or export.verify is false)")
        return None
    from tunesmith.export.llama_cpp import LlamaCppCrashed
    from tunesmith.export.verify import verify_gguf

    try:
        result = verify_gguf(ctx.folder / gguf, (ctx.model, ctx.tokenizer))
    except LlamaCppCrashed as err:  # llama.cpp died in its child process: report it, keep the files
        print(f"    could not run: {err}")
        return {"gguf": gguf, "could_not_run": str(err)}
    print("    " + result.summary().replace("\n", "\n    "))
    if not result.passed:
        ctx.state.results["verify"] = result.to_dict()  # the report shows what failed
        raise TunesmithError(
            f"The GGUF file {gguf} does not behave like the trained model ({' '.join(result.summary().split())})."
        )
    return result.to_dict()


def report(ctx: RunContext) -> None:
    """Write report.md and report.html, mark the run finished, and say where to look next."""
    ctx.state.status = "finished"
    status = "finished, but the GGUF is not verified" if _verification_could_not_run(ctx) else "finished"
    data = report_data(ctx, status)
    _, html = write_report(data, ctx.folder)
    print(f"    held-out loss {_fmt(data.eval_loss_before)} -> {_fmt(data.eval_loss_after)}; report: {html}")
    if data.modelfile and data.ollama_name:
        folder = ctx.folder / Path(data.modelfile).parent
        print(
            f"    try it: cd {folder} && ollama create {data.ollama_name} -f Modelfile && ollama run {data.ollama_name}"
        )


# -- helpers ---------------------------------------------------------------------------------------------


def _json(config: RunConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _template(config: RunConfig):
    """The data's prompt format: a PromptTemplate, a chat template name, or None (the tokenizer's own)."""
    if config.data.prompt_template:
        return PromptTemplate(config.data.prompt_template)
    return config.data.chat_template


def _environment() -> dict[str, str]:
    from tunesmith.recipe.environment import can_train, check_environment

    rows = check_environment()
    if not can_train(rows):
        bad = next(r for r in rows if r.required and not r.ok)
        raise TunesmithError(f"This install cannot train: {bad.name} is {bad.value}. Fix: {bad.fix}.")
    return {r.name: r.value for r in rows if r.name != "supported families"}


def _require_llama_cpp() -> None:
    from tunesmith.export.llama_cpp import require_llama_cpp

    require_llama_cpp("export.verify (on by default; --set export.verify=false skips it)")


def _warn_if_llama_cpp_fails(found: str) -> None:
    """Say at the start, not after training, that llama.cpp's self-test failed (the run still goes on)."""
    from tunesmith.export.llama_cpp import REBUILD_COMMAND

    if not found.startswith("works"):
        print(
            f"    warning: llama.cpp verification: {found}. Training and export go on; the report will say "
            f"whether the GGUF could be verified. Fix: {REBUILD_COMMAND}"
        )


def _verification_could_not_run(ctx: RunContext) -> bool:
    return "could_not_run" in (ctx.state.results.get("verify") or {})


def _ask(ctx: RunContext) -> list[str]:
    from tunesmith.models.chat import chat

    answers = []
    for question in ctx.config.probes:
        answer = chat(
            ctx.model,
            ctx.tokenizer,
            question,
            max_new_tokens=ctx.config.generation.max_new_tokens,
            stream=False,
        )
        print(f"    Q: {question}\n    A: {_one_line(answer)}")
        answers.append(answer)
    return answers


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _build_trainer(ctx: RunContext):
    from tunesmith.training import SFTTrainer, TrainingArguments

    t = ctx.config.training
    args = TrainingArguments(
        output_dir=str(ctx.folder / TRAINING_DIR),
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        optim=t.optim,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        seed=t.seed,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        max_seq_length=ctx.config.model.max_seq_length,
        packing=t.packing,
        held_out_eval=False,  # the run measures it itself, once, in its own stages
        report_to="none",
    )
    return SFTTrainer(
        model=ctx.model,
        tokenizer=ctx.tokenizer,
        train_dataset=ctx.prepared.train,
        eval_dataset=ctx.prepared.eval,
        args=args,
    )


def _eval_loss(ctx: RunContext) -> float | None:
    if ctx.prepared.eval is None or len(ctx.prepared.eval) == 0:
        return None
    return float(ctx.trainer.evaluate()["eval_loss"])


def _last_checkpoint(ctx: RunContext) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = ctx.folder / TRAINING_DIR
    found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return Path(found) if found else None


def _train_losses(ctx: RunContext) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in ctx.trainer.state.log_history if "loss" in h and "step" in h]


def _result(ctx: RunContext, finished: bool, status: str) -> RunResult:
    data = report_data(ctx, status)
    return RunResult(
        folder=ctx.folder,
        finished=finished,
        status=status,
        report_md=ctx.folder / "report.md",
        report_html=ctx.folder / "report.html",
        eval_loss_before=data.eval_loss_before,
        eval_loss_after=data.eval_loss_after,
        probes=data.probes,
        exports=data.exports,
        verification=data.verification,
    )


def _unverified(ctx: RunContext) -> RunResult:
    """The run finished and reported, but llama.cpp could not verify the GGUF: a clear error, non-zero exit.
    The verification stage is left undone, so the same command verifies once llama.cpp works."""
    reason = ctx.state.results["verify"]["could_not_run"]
    ctx.state.completed.remove("verify")
    ctx.state.status = "unverified"
    ctx.state.save()
    raise TunesmithError(
        f"Training and export finished, but the GGUF could not be verified: {reason} The GGUF file, "
        f"report.html and report.md are in {ctx.folder}; once `tunesmith check` says llama.cpp works, run "
        "the same command again to verify (nothing is trained again)."
    )


def _interrupted(ctx: RunContext) -> RunResult:
    step = ctx.trainer.state.global_step
    status = f"interrupted at training step {step} of {ctx.config.training.max_steps}"
    ctx._stop("interrupted", status)
    print(
        f"Stopped at step {step}: a checkpoint and the loss curve are in {ctx.folder}. "
        "Run the same command again to resume.",
        file=sys.stderr,
    )
    return _result(ctx, finished=False, status=status)
