"""``run(config)``: the reference tutorial's whole flow, as one function that reads top to bottom.

check -> load -> data -> LoRA + held-out loss -> ask the probes -> train -> held-out loss -> ask again
-> export -> verify -> report. Each stage is a named function below, in run order, listed once in
``STAGES``; each prints one headed line and records what it found (a ``tunesmith.recipe.results``
record) in the output folder's state file, so a failed or interrupted run keeps its results and the same
command resumes it (finished stages are not repeated; training continues from its last checkpoint).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith._distributed import is_main_process
from tunesmith.data.prompt_template import PromptTemplate
from tunesmith.data.stats import DataStats
from tunesmith.errors import TunesmithError
from tunesmith.models.loader import check_room
from tunesmith.models.registry import ALIASES
from tunesmith.models.sources import HubUnreachable, alias_gguf_path
from tunesmith.recipe.config import RunConfig
from tunesmith.recipe.context import LOSS_PNG, TRAINING_DIR, RunContext, Stage, model_name
from tunesmith.recipe.datacheck import check_data
from tunesmith.recipe.quality import HeldOutQuestion, held_out_questions, mean_rouge_l, mean_score
from tunesmith.recipe.ranks import main_first, open_state, process_group
from tunesmith.recipe.report import ExportFile, ProbeAnswer, report_paths
from tunesmith.recipe.results import (
    CheckResult,
    EvalResult,
    ExportResult,
    LoraResult,
    ProbeResult,
    TrainResult,
    VerifyResult,
)
from tunesmith.recipe.state import check_output_folder, config_fingerprint
from tunesmith.recipe.summary import report_data, write_run_report

__all__ = ["run", "dry_run", "RunResult", "RunContext", "STAGES", "prompt_format", "dataset_arguments"]


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
    rouge_l_before: float | None = None  # mean over the held-out questions (None: not measured)
    rouge_l_after: float | None = None
    probes: list[ProbeAnswer] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    verification: dict[str, Any] | None = None


def run(config: RunConfig) -> RunResult:
    """Fine-tune, compare, export, verify and report, as ``config`` says (see the module docstring).

    Under several processes (``tunesmith run --gpus N``, torchrun) every rank calls this; see
    :mod:`tunesmith.recipe.ranks` for who does what.
    """
    with process_group(config.training.ddp_timeout):
        return _run(config)


def _run(config: RunConfig) -> RunResult:
    state = open_state(Path(config.output.folder), config_fingerprint(_json(config)), config.output.overwrite)
    ctx = RunContext(config=config, state=state, stage_count=len(STAGES), write_report=write_run_report)
    if state.resumed:
        print(
            f"Resuming the unfinished run in {ctx.folder} "
            f"(finished stages: {', '.join(state.completed) or 'none'})."
        )
    for stage in STAGES:
        ctx.run_stage(stage)
        if ctx.interrupted:  # Ctrl-C during training: a checkpoint is saved
            return _interrupted(ctx)
    if not is_main_process():  # rank 0 finishes the run and reports it
        return RunResult(folder=ctx.folder, finished=True, status="trained")
    if _verification_could_not_run(ctx):
        return _unverified(ctx)
    return _result(ctx, finished=True, status="finished")


def dry_run(config: RunConfig) -> None:
    """Check the config, the data, the model's source and size, and the output folder (no model is loaded,
    nothing is written but a probe file, removed at once); raise on a problem."""
    summary = check_data(config)
    m = config.model
    try:  # a hub id: its config.json names a supported family; and the weights fit this machine
        check_room(m.name, **m.model_dump(exclude={"name", "max_seq_length"}))  # as load_base_model loads it
    except HubUnreachable as err:  # offline now; the real run may be online, and then downloads it
        print(f"Note: the model was not checked: {err}", file=sys.stderr)
    check_output_folder(Path(config.output.folder))
    check_output_space(config)
    print(f"Config OK. Data OK: {summary}.")
    print(f"A run would write to {Path(config.output.folder).resolve()}.")


def check_output_space(config: RunConfig) -> None:
    """Refuse a run whose output disk cannot hold a copy of the weights per export format plus the
    checkpoints (at least 200 MB)."""
    from tunesmith.export._output import check_free_space

    name = Path(config.model.name).expanduser()
    if config.model.name.lower() in ALIASES:
        weights = alias_gguf_path(ALIASES[config.model.name.lower()]).stat().st_size
    elif name.is_file():
        weights = name.stat().st_size
    else:  # a folder (its safetensors) or a hub id (not known before the download: 0)
        weights = sum(p.stat().st_size for p in name.glob("*.safetensors")) if name.is_dir() else 0
    check_free_space(Path(config.output.folder), max(200_000_000, weights * (len(config.export.formats) + 1)))


def prompt_format(config: RunConfig) -> PromptTemplate | str | None:
    """The data's prompt format: a PromptTemplate, a chat template name, or None (the tokenizer's own)."""
    if config.data.prompt_template:
        return PromptTemplate(config.data.prompt_template)
    return config.data.chat_template


def dataset_arguments(config: RunConfig) -> dict[str, Any]:
    """The ``tunesmith.data.prepare_dataset`` keyword arguments (all but the tokenizer) for ``config``."""
    d = config.data
    return {
        "source": d.file,
        **d.model_dump(include={"fields", "duplicates", "encoding"}),
        "template": prompt_format(config),
        "max_seq_length": config.model.max_seq_length,
        "on_too_long": d.too_long,
        "eval_split": d.eval_file or (d.eval_split or None),
        "responses_only": d.train_on_responses_only,
        "limit": d.max_rows,
        "seed": config.training.seed,
    }


# -- the stages, in run order ----------------------------------------------------------------------------


def check_environment(ctx: RunContext) -> CheckResult:
    """Versions, device and precision; the data file is read and checked before any model loads."""
    env = _environment()
    if ctx.config.export.verify and "gguf" in ctx.config.export.formats:
        _require_llama_cpp()
        _warn_if_llama_cpp_fails(env.get("llama.cpp verification", ""))
    summary = check_data(ctx.config)
    check_output_space(ctx.config)
    print(f"    {env.get('device', '?')}; torch {env.get('torch', '?')}; data: {summary}")
    return CheckResult(environment=env)


def load_base_model(ctx: RunContext) -> None:
    """Load the model and tokenizer, and give the tokenizer the prompt format the data will use."""
    from tunesmith.data import get_chat_template
    from tunesmith.models.loader import load

    m = ctx.config.model
    with main_first():  # dtype "auto" is load's own default
        ctx.model, ctx.tokenizer = load(m.name, **m.model_dump(exclude={"name"}))
    template = prompt_format(ctx.config)
    if isinstance(template, PromptTemplate):
        ctx.tokenizer.chat_template = template.to_chat_template()  # probes, training and export share it
    elif template is not None:
        get_chat_template(ctx.tokenizer, template)


def probe_before(ctx: RunContext) -> ProbeResult:
    """Greedy answers of the base model (the same prompt format the fine-tuned model will see; the adapters
    attached before are untrained and add nothing)."""
    return ProbeResult(_ask(ctx))


def prepare_data(ctx: RunContext) -> DataStats:
    """Read, validate, format and tokenize the data; split off the held-out rows."""
    ctx.prepared = _prepare(ctx)
    print(f"    {ctx.prepared.stats.summary()}")
    return ctx.prepared.stats


def _prepare(ctx: RunContext):
    """The data as the configured training method needs it (SFT rows, preference pairs or prompts)."""
    from tunesmith.data import prepare_dataset
    from tunesmith.data.preference import prepare_preference_dataset, prepare_prompt_dataset

    method, arguments = ctx.config.training.method, dataset_arguments(ctx.config)
    if method == "sft":
        return prepare_dataset(tokenizer=ctx.tokenizer, **arguments)
    common = {k: arguments[k] for k in ("source", "template", "fields", "encoding", "limit")}
    if method == "grpo":
        return prepare_prompt_dataset(tokenizer=ctx.tokenizer, **common)
    return prepare_preference_dataset(
        tokenizer=ctx.tokenizer, **common, max_length=arguments["max_seq_length"],
        duplicates=arguments["duplicates"], eval_split=arguments["eval_split"], seed=arguments["seed"],
    )  # fmt: skip


def add_lora(ctx: RunContext) -> LoraResult:
    """Wrap the model in LoRA adapters, build the trainer and measure the held-out loss before training."""
    from tunesmith.training.lora import get_peft_model

    ctx.model = get_peft_model(ctx.model, **ctx.config.lora.model_dump())
    ctx.trainer = _build_trainer(ctx)
    earlier = ctx.state.results.lora
    if earlier is not None:  # measured before the interruption, on the untrained adapters
        return earlier
    loss = _eval_loss(ctx)
    print(f"    held-out loss before training: {_fmt(loss)}")
    result = LoraResult(eval_loss_before=loss)
    if is_main_process():  # the untrained adapters add nothing: these are the base model's answers
        sample = _held_out_sample(ctx)
        result.held_out_questions = [q.question for q in sample]
        result.held_out_references = [q.reference for q in sample]
        result.held_out_answers = _answer_held_out(ctx, sample, probes_next="probes_before")
    return result


def train(ctx: RunContext) -> TrainResult:
    """Train with a progress bar; Ctrl-C stops after a checkpoint; a re-run resumes from the last one."""
    from tunesmith.training.base import global_batch_text
    from tunesmith.training.interrupt import StopOnInterrupt, graceful_interrupt

    stopper = StopOnInterrupt()
    ctx.trainer.add_callback(stopper)
    checkpoint = ctx.last_checkpoint()
    if checkpoint is not None:
        print(f"    resuming from {checkpoint.relative_to(ctx.folder)}")
    with graceful_interrupt(stopper):
        ctx.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    ctx.interrupted = stopper.requested and ctx.trainer.state.global_step < ctx.config.training.max_steps
    batch = global_batch_text(ctx.trainer.args)
    return TrainResult(losses=_train_losses(ctx), steps=ctx.trainer.state.global_step, batch=batch)


def eval_after(ctx: RunContext) -> EvalResult:
    """The held-out loss after training (the same rows as before), added to the loss curve."""
    from tunesmith.training.callbacks import LOG_NAME
    from tunesmith.training.plot import plot_loss_curve, read_log

    loss = _eval_loss(ctx)  # every rank: the held-out rows are split over them
    if not is_main_process():
        return EvalResult(eval_loss_after=loss)
    lora = ctx.state.results.lora
    before = lora.eval_loss_before if lora else None
    print(f"    held-out loss: {_fmt(before)} before -> {_fmt(loss)} after")
    sample = _held_out_sample(ctx) if lora and lora.held_out_answers else []
    answers = _answer_held_out(ctx, sample, probes_next="probes_after")
    if answers:
        rouge_before = mean_rouge_l(lora.held_out_references, lora.held_out_answers)
        rouge_after = mean_rouge_l(lora.held_out_references, answers)
        print(
            f"    answer quality (ROUGE-L against {len(answers)} held-out answers): "
            f"{_fmt(rouge_before)} before -> {_fmt(rouge_after)} after"
        )
    records = [r for r in read_log(ctx.folder / TRAINING_DIR / LOG_NAME) if "eval_loss" not in r]
    held_out = [(0, before), (ctx.trainer.state.global_step, loss)]
    records += [{"step": step, "eval_loss": value} for step, value in held_out if value is not None]
    plot_loss_curve(records, ctx.folder / LOSS_PNG)
    return EvalResult(eval_loss_after=loss, held_out_answers=answers)


def probe_after(ctx: RunContext) -> ProbeResult:
    """Greedy answers of the fine-tuned model to the same questions."""
    return ProbeResult(_ask(ctx))


def export(ctx: RunContext) -> ExportResult:
    """Write the configured formats: GGUF (+ Ollama Modelfile), merged 16-bit folder, LoRA adapter."""
    from tunesmith.export.gguf import save_pretrained_gguf
    from tunesmith.export.merge import save_pretrained_merged
    from tunesmith.export.ollama import MODELFILE_NAME

    ex, out = ctx.config.export, ExportResult()
    # overwrite=True: these folders belong to this run (a resumed export replaces its own partial output)
    for kind, method in (("lora", "lora"), ("merged", "merged_16bit")):
        if kind in ex.formats:
            save_pretrained_merged(
                ctx.model, ctx.folder / kind, ctx.tokenizer, save_method=method, overwrite=True
            )
            setattr(out, kind, kind)
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
        out.gguf = gguf.relative_to(ctx.folder).as_posix()
        if ex.modelfile:
            out.modelfile = (gguf.parent / MODELFILE_NAME).relative_to(ctx.folder).as_posix()
    for kind, rel in out.written().items():
        print(f"    {kind}: {rel}")
    return out


def verify(ctx: RunContext) -> VerifyResult | None:
    """Load the GGUF in llama.cpp and compare tokens and next-token choices with the PyTorch model."""
    gguf = ctx.state.results.export.gguf if ctx.state.results.export else None
    if not (ctx.config.export.verify and gguf):
        print("    skipped (no GGUF, or export.verify is false)")
        return None
    from tunesmith.export.llama_cpp import LlamaCppCrashed
    from tunesmith.export.verify import verify_gguf

    try:
        report = verify_gguf(ctx.folder / gguf, (ctx.model, ctx.tokenizer))
    except LlamaCppCrashed as err:  # llama.cpp died in its child process: report it, keep the files
        print(f"    could not run: {err}")
        return VerifyResult(gguf=gguf, could_not_run=str(err))
    print("    " + report.summary().replace("\n", "\n    "))
    result = VerifyResult(**report.to_dict())
    if not result.passed:
        ctx.state.results.verify = result  # the report shows what failed
        raise TunesmithError(
            f"The GGUF file {gguf} does not behave like the trained model "
            f"({' '.join(report.summary().split())})."
        )
    return result


def report(ctx: RunContext) -> None:
    """Write report.md and report.html, mark the run finished, and say where to look next."""
    ctx.state.status = "finished"
    status = "finished, but the GGUF is not verified" if _verification_could_not_run(ctx) else "finished"
    data = write_run_report(ctx, status)
    _, html = report_paths(ctx.folder)
    print(f"    held-out loss {_fmt(data.eval_loss_before)} -> {_fmt(data.eval_loss_after)}; report: {html}")
    if data.modelfile and data.ollama_name:
        folder = ctx.folder / Path(data.modelfile).parent
        print(
            f"    try it: cd {folder} && ollama create {data.ollama_name} -f Modelfile "
            f"&& ollama run {data.ollama_name}"
        )


STAGES: tuple[Stage, ...] = (
    Stage("check", "Checking the environment and the data file", check_environment, main_only=True),
    Stage("load", lambda c: f"Loading the base model {c.model.name}", load_base_model),
    Stage("data", "Loading and formatting the data", prepare_data),
    Stage("lora", "Adding LoRA adapters and measuring the held-out loss", add_lora),
    # after the held-out stage, whose batch can carry the probes (_answer_held_out)
    Stage(
        "probes_before", "Asking the probe questions before training", probe_before, once=True, main_only=True
    ),
    Stage("train", lambda c: f"Training for {c.training.max_steps} steps", train),
    Stage("eval_after", "Measuring the held-out loss after training", eval_after, once=True),
    Stage(
        "probes_after", "Asking the probe questions after training", probe_after, once=True, main_only=True
    ),
    Stage("export", lambda c: "Exporting " + ", ".join(c.export.formats), export, once=True, main_only=True),
    Stage("verify", "Verifying the GGUF in llama.cpp", verify, once=True, main_only=True),
    Stage("report", "Writing the report", report, main_only=True),
)
"""The run's stages in order; the headed lines count them (``[3/11] ...``)."""


# -- helpers ---------------------------------------------------------------------------------------------


def _json(config: RunConfig) -> dict[str, Any]:
    return json.loads(config.model_dump_json())


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


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


def _ask(ctx: RunContext) -> list[str]:
    """Every probe answered in one batch (the fast decode path), printed in order; the held-out stage just
    before may have answered them in its own batch already."""
    answers, ctx.probe_answers = ctx.probe_answers, None
    if answers is None:
        answers = _answer(ctx, _probe_prompts(ctx))
    for question, answer in zip(ctx.config.probes, answers, strict=True):
        print(f"    Q: {question}\n    A: {_one_line(answer)}")
    return answers


def _held_out_sample(ctx: RunContext) -> list[HeldOutQuestion]:
    """The held-out questions scored before and after training (SFT data only: it has reference answers)."""
    if ctx.config.training.method != "sft":
        return []
    return held_out_questions(ctx.prepared.eval, ctx.tokenizer, ctx.config.generation.held_out_questions)


def _answer_held_out(ctx: RunContext, sample: list[HeldOutQuestion], probes_next: str) -> list[str]:
    """Greedy answers to the held-out questions. Unless the stage ``probes_next`` is already done, the
    probes go into the same batch: on a CPU a decode step of 11 rows costs about what one of 8 or 3 does, so
    one decode instead of two; their answers wait in ``ctx.probe_answers`` for that stage."""
    prompts = [q.prompt_ids for q in sample]
    if not prompts:
        return []
    probes = [] if ctx.state.done(probes_next) else _probe_prompts(ctx)
    print(
        f"    answering {len(prompts)} held-out question(s), to score against their reference answers"
        + (f", with the {len(probes)} probe question(s) in the same batch" if probes else "")
    )
    answers = _answer(ctx, prompts + probes)
    if probes:
        ctx.probe_answers = answers[len(prompts) :]
    return answers[: len(prompts)]


def _probe_prompts(ctx: RunContext) -> list:
    from tunesmith.generation.chat import question_prompts

    return question_prompts(ctx.tokenizer, list(ctx.config.probes))


def _answer(ctx: RunContext, prompts: list) -> list[str]:
    """Greedy answers to ``prompts`` (token ids) in one left-padded batch, the run's decoding settings."""
    from tunesmith.generation.chat import answer_prompts

    generation = ctx.config.generation
    return answer_prompts(
        ctx.model,
        ctx.tokenizer,
        prompts,
        max_new_tokens=generation.max_new_tokens,
        repetition_penalty=generation.repetition_penalty,
    )


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _verification_could_not_run(ctx: RunContext) -> bool:
    return ctx.state.results.verify is not None and not ctx.state.results.verify.finished


def _build_trainer(ctx: RunContext):
    import tunesmith.training as training
    from tunesmith.training.rewards import resolve_rewards

    t, method = ctx.config.training, ctx.config.training.method
    common = dict(
        output_dir=str(ctx.folder / TRAINING_DIR),
        **t.model_dump(exclude={"method", "packing"} if method != "sft" else {"method"}),
        per_device_eval_batch_size=t.per_device_train_batch_size,
        held_out_eval=False,  # the run measures it itself, once, in its own stages
        report_to="none",
    )
    data = {"model": ctx.model, "tokenizer": ctx.tokenizer, "train_dataset": ctx.prepared.train}
    max_length = ctx.config.model.max_seq_length
    if method == "grpo":
        g = ctx.config.grpo
        options = g.model_dump(exclude={"rewards", "answer_column", "max_length_tokens"})
        rewards = resolve_rewards(
            g.rewards, answer_column=g.answer_column, max_length_tokens=g.max_length_tokens
        )
        args = training.GRPOConfig(**common, **options)
        return training.GRPOTrainer(**data, reward_funcs=rewards, args=args)
    if method in ("dpo", "orpo"):
        section = getattr(ctx.config, method).model_dump()
        config_cls = training.DPOConfig if method == "dpo" else training.ORPOConfig
        trainer_cls = training.DPOTrainer if method == "dpo" else training.ORPOTrainer
        args = config_cls(**common, **section, max_length=max_length)
        return trainer_cls(**data, eval_dataset=ctx.prepared.eval, args=args)
    args = training.TrainingArguments(**common, max_seq_length=max_length)
    return training.SFTTrainer(**data, eval_dataset=ctx.prepared.eval, args=args)


def _eval_loss(ctx: RunContext) -> float | None:
    if ctx.prepared.eval is None or len(ctx.prepared.eval) == 0:
        return None
    return float(ctx.trainer.evaluate()["eval_loss"])


def _train_losses(ctx: RunContext) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in ctx.trainer.state.log_history if "loss" in h and "step" in h]


def _result(ctx: RunContext, finished: bool, status: str) -> RunResult:
    data = report_data(ctx, status)
    md, html = report_paths(ctx.folder)
    return RunResult(
        folder=ctx.folder,
        finished=finished,
        status=status,
        report_md=md,
        report_html=html,
        eval_loss_before=data.eval_loss_before,
        eval_loss_after=data.eval_loss_after,
        rouge_l_before=mean_score([h.rouge_l_before for h in data.held_out]),
        rouge_l_after=mean_score([h.rouge_l_after for h in data.held_out]),
        probes=data.probes,
        exports=data.exports,
        verification=data.verification,
    )


def _unverified(ctx: RunContext) -> RunResult:
    """The run finished and reported, but llama.cpp could not verify the GGUF: a clear error, non-zero exit.
    The verification stage stays undone (see ``VerifyResult``), so the same command verifies once
    llama.cpp works."""
    reason = ctx.state.results.verify.could_not_run
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
    ctx.stop("interrupted", status)
    if is_main_process():  # rank 0 speaks for the run
        print(
            f"Stopped at step {step}: a checkpoint and the loss curve are in {ctx.folder}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
    return _result(ctx, finished=False, status=status)
