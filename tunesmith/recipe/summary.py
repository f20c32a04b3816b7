"""From a run's state file to the report's facts (so failed and interrupted runs report too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.recipe.config import dump_config
from tunesmith.recipe.context import LOSS_PNG, RunContext, model_name
from tunesmith.recipe.report import ExportFile, ProbeAnswer, ReportData

__all__ = ["report_data"]


def report_data(ctx: RunContext, status: str) -> ReportData:
    """Everything the report shows, from the state file's results (so partial runs report too)."""
    res = ctx.state.results
    before, after = res.get("probes_before") or [], res.get("probes_after") or []
    probes = [
        ProbeAnswer(q, before[i] if i < len(before) else None, after[i] if i < len(after) else None)
        for i, q in enumerate(ctx.config.probes)
    ]
    exported = res.get("export") or {}
    png = ctx.folder / LOSS_PNG
    return ReportData(
        title=f"tunesmith run: {ctx.folder.name}",
        status=status,
        config_yaml=dump_config(ctx.config),
        environment=res.get("check") or {},
        data_stats=_data_rows(res.get("data") or {}),
        loss_png=png if png.is_file() else None,
        train_losses=[tuple(x) for x in (res.get("train") or {}).get("losses", [])],
        eval_loss_before=(res.get("lora") or {}).get("eval_loss_before"),
        eval_loss_after=(res.get("eval_after") or {}).get("eval_loss_after"),
        probes=probes,
        exports=_export_files(ctx.folder, exported),
        verification=_verification_rows(res.get("verify")),
        ollama_name=model_name(ctx) if exported.get("modelfile") else None,
        modelfile=exported.get("modelfile"),
        gguf_file=exported.get("gguf"),
        llama_prompt=_rendered_prompt(ctx),
        stage_seconds=dict(ctx.seconds),
    )


def _data_rows(stats: dict[str, Any]) -> dict[str, object]:
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
        "duplicates": "duplicate rows",
        "max_seq_length": "max_seq_length",
    }
    return {label: stats[key] for key, label in names.items() if key in stats}


def _verification_rows(result: dict[str, Any] | None) -> dict[str, object] | None:
    if not result:
        return None
    if "could_not_run" in result:
        return {
            "file": Path(result["gguf"]).name,
            "passed": "could not run",
            "reason": result["could_not_run"],
        }
    return {
        "file": Path(result["gguf"]).name + f" ({result['file_type']})",
        "passed": result["passed"],
        "tokenization identical": result["tokenization_identical"],
        "top-1 next-token agreement": f"{result['top1_agreement']:.1%} (needs >= {result['top1_threshold']:.0%})",
        "greedy continuations identical": f"{result['greedy_matches']} of {result['prompts']} prompts",
    }


def _export_files(folder: Path, exported: dict[str, str]) -> list[ExportFile]:
    files = []
    for kind, rel in exported.items():
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
    from tunesmith.models.chat import build_prompt

    if ctx.tokenizer is None or not ctx.config.probes:
        return None
    return build_prompt(ctx.tokenizer, ctx.config.probes[0])
