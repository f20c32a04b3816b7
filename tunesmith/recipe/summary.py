"""From a run's state file to the report's facts (so failed and interrupted runs report too)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from tunesmith.data.stats import DataStats
from tunesmith.recipe.config import dump_config
from tunesmith.recipe.context import LOSS_PNG, REWARDS_PNG, SAMPLES_JSON, RunContext, model_name
from tunesmith.recipe.quality import rouge_l
from tunesmith.recipe.report import ExportFile, HeldOutAnswer, ProbeAnswer, ReportData, write_report
from tunesmith.recipe.results import EvalResult, ExportResult, LoraResult, ProbeResult, VerifyResult

__all__ = ["report_data", "write_run_report"]


def write_run_report(ctx: RunContext, status: str) -> ReportData:
    """Write report.md and report.html for the run as it stands; return what they show."""
    data = report_data(ctx, status)
    write_report(data, ctx.folder)
    return data


def report_data(ctx: RunContext, status: str) -> ReportData:
    """Everything the report shows, from the state file's results (so partial runs report too)."""
    res = ctx.state.results
    exported = res.export or ExportResult()
    png = ctx.folder / LOSS_PNG
    return ReportData(
        title=f"tunesmith run: {ctx.folder.name}",
        status=status,
        config_yaml=dump_config(ctx.config),
        environment=res.check.environment if res.check else {},
        data_stats=_data_rows(res.data),
        loss_png=png if png.is_file() else None,
        method=ctx.config.training.method,
        rewards_png=ctx.folder / REWARDS_PNG if (ctx.folder / REWARDS_PNG).is_file() else None,
        samples=_samples(ctx.folder / SAMPLES_JSON),
        train_losses=list(res.train.losses) if res.train else [],
        train_steps=res.train.steps if res.train else None,
        train_batch=res.train.batch if res.train else None,
        eval_loss_before=res.lora.eval_loss_before if res.lora else None,
        eval_loss_after=res.eval_after.eval_loss_after if res.eval_after else None,
        probes=_probes(ctx.config.probes, res.probes_before, res.probes_after),
        held_out=_held_out(res.lora, res.eval_after),
        exports=_export_files(ctx.folder, exported),
        verification=_verification_rows(res.verify),
        ollama_name=model_name(ctx) if exported.modelfile else None,
        modelfile=exported.modelfile,
        gguf_file=exported.gguf,
        llama_prompt=_rendered_prompt(ctx),
        stage_seconds=dict(ctx.seconds),
    )


def _samples(path: Path) -> dict[str, list[dict]]:
    """GRPO's sample completions (first and last step), or nothing."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _probes(questions: list[str], before: ProbeResult | None, after: ProbeResult | None) -> list[ProbeAnswer]:
    def nth(result: ProbeResult | None, i: int) -> str | None:
        return result.answers[i] if result and i < len(result.answers) else None

    return [ProbeAnswer(q, nth(before, i), nth(after, i)) for i, q in enumerate(questions)]


def _held_out(lora: LoraResult | None, after: EvalResult | None) -> list[HeldOutAnswer]:
    """Each held-out question asked before training, with its answers and ROUGE-L scores."""
    if lora is None:
        return []
    later = after.held_out_answers if after else []
    rows = []
    for i, (question, reference, before) in enumerate(
        zip(lora.held_out_questions, lora.held_out_references, lora.held_out_answers, strict=True)
    ):
        answer = later[i] if i < len(later) else None
        score = rouge_l(reference, answer) if answer is not None else None
        rows.append(HeldOutAnswer(question, reference, before, answer, rouge_l(reference, before), score))
    return rows


def _data_rows(stats: DataStats | None) -> dict[str, object]:
    names = {
        "source": "file",
        "layout": "layout",
        "template": "prompt format",
        "rows": "training rows",
        "eval_rows": "held-out rows",
        "tokens": "training tokens",
        "answer_tokens": "answer tokens (carry the loss)",
        "max_tokens": "longest row (tokens)",
        "truncated": "rows truncated",
        "dropped_no_answer": "rows dropped (answer cut off)",
        "dropped_same_pair": "pairs dropped (answers the same within max_seq_length)",
        "duplicates": "duplicate rows",
        "max_seq_length": "max_seq_length",
    }
    values = asdict(stats) if stats else {}
    return {label: values[key] for key, label in names.items() if key in values}


def _verification_rows(result: VerifyResult | None) -> dict[str, object] | None:
    if result is None:
        return None
    if not result.finished:
        return {"file": Path(result.gguf).name, "passed": "could not run", "reason": result.could_not_run}
    return {
        "file": f"{Path(result.gguf).name} ({result.file_type})",
        "passed": result.passed,
        "tokenization identical": result.tokenization_identical,
        "top-1 next-token agreement": f"{result.top1_agreement:.1%} (needs >= {result.top1_threshold:.0%})",
        "greedy continuations identical": f"{result.greedy_matches} of {result.prompts} prompts",
    }


def _export_files(folder: Path, exported: ExportResult) -> list[ExportFile]:
    files = []
    for kind, rel in exported.written().items():
        path = folder / rel
        if path.is_dir():
            files += [
                ExportFile(p.relative_to(folder).as_posix(), kind, p.stat().st_size)
                for p in sorted(path.rglob("*"))
                if p.is_file()
            ]
        elif path.is_file():
            files.append(ExportFile(rel, kind, path.stat().st_size))
    return files


def _rendered_prompt(ctx: RunContext) -> str | None:
    from tunesmith.generation.chat import build_prompt

    if ctx.tokenizer is None or not ctx.config.probes:
        return None
    return build_prompt(ctx.tokenizer, ctx.config.probes[0])
