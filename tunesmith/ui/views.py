"""What the page shows, as HTML, Markdown and tables made from the run's facts (no Gradio here).

Every function takes the language code and returns text or plain data the app puts into a component,
so each view can be checked without a browser.
"""

from __future__ import annotations

import html

from tunesmith.recipe.report import ReportData, run_commands
from tunesmith.ui.i18n import text
from tunesmith.ui.preview import ERRORS_LISTED, DataPreview
from tunesmith.ui.progress import Progress

__all__ = [
    "message",
    "error_message",
    "environment_table",
    "data_view",
    "prompt_view",
    "progress_view",
    "curve_points",
    "series_name",
    "compare_view",
    "verification_view",
    "commands_view",
    "export_files",
    "duration",
]


def message(body: str, kind: str = "info") -> str:
    """One paragraph for the page's message box (``kind``: info or error)."""
    if not body:
        return ""
    return (
        f'<div class="ts-msg ts-{kind}" role="{"alert" if kind == "error" else "status"}">{_esc(body)}</div>'
    )


def error_message(err: BaseException, lang: str) -> str:
    """An exception as one clear paragraph: a tunesmith error as it is, anything else named, never a
    traceback."""
    from tunesmith.errors import TunesmithError

    if isinstance(err, TunesmithError):
        return message(str(err), "error")
    return message(text(lang, "unexpected", kind=type(err).__name__, message=str(err).rstrip(".")), "error")


def _esc(value: object) -> str:
    return html.escape(str(value))


def environment_table(rows) -> list[list[str]]:
    """``tunesmith check``'s rows (``recipe.environment.Row``) as table rows: check, result, fix."""
    return [[r.name, r.value + ("" if r.ok else "  [!]"), "" if r.ok else r.fix] for r in rows]


def _counts(preview: DataPreview, lang: str) -> str:
    s = preview.stats
    rows = [
        (text(lang, "train_rows"), s.rows),
        (text(lang, "eval_rows"), s.eval_rows),
        (
            text(lang, "duplicates" if s.duplicates_dropped or not s.duplicates else "duplicates_kept"),
            s.duplicates,
        ),
        (text(lang, "truncated"), f"{s.truncated} (max_seq_length {s.max_seq_length})"),
        (text(lang, "tokens"), f"{s.tokens:,}"),
    ]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="ts-counts">{cells}</table>'


def _formatted(row: str, eos: str | None) -> str:
    """A formatted row as ``<pre>``, its end-of-text token marked."""
    if eos and row.rstrip().endswith(eos):
        cut = row.rstrip().rfind(eos)
        body = _esc(row[:cut]) + f'<mark class="ts-eos">{_esc(eos)}</mark>' + _esc(row[cut + len(eos) :])
    else:
        body = _esc(row)
    return f'<pre class="ts-row">{body}</pre>'


def _errors(preview: DataPreview, lang: str) -> str:
    items = "".join(f"<li>{_esc(e)}</li>" for e in preview.errors)
    listed = len(preview.errors) >= ERRORS_LISTED
    more = f"<p>{_esc(text(lang, 'more_errors', n=ERRORS_LISTED))}</p>" if listed else ""
    head = f"<h4>{_esc(text(lang, 'row_errors'))}</h4>"
    return f'<div class="ts-errors" role="alert">{head}<ul>{items}</ul>{more}</div>'


def data_view(preview: DataPreview | None, lang: str) -> str:
    """The data tab: layout, prompt format, row counts and the first formatted rows, or the rows to fix."""
    if preview is None:
        return f"<p>{_esc(text(lang, 'no_data'))}</p>"
    if preview.errors:
        return _errors(preview, lang)
    s = preview.stats
    head = (
        f'<p class="ts-layout"><b>{_esc(text(lang, "layout"))}:</b> <code>{_esc(s.layout)}</code> &nbsp; '
        f"<b>{_esc(text(lang, 'prompt_format'))}:</b> <code>{_esc(s.template)}</code></p>"
    )
    rows = "".join(_formatted(r, preview.eos) for r in preview.rows)
    counts = f"<h4>{_esc(text(lang, 'counts'))}</h4>{_counts(preview, lang)}"
    return f"{head}{counts}<h4>{_esc(text(lang, 'first_rows'))}</h4>{rows}"


def prompt_view(preview: DataPreview | None, lang: str) -> str:
    """The prompt tab's live preview: the first row in the chosen format, or why it cannot be formatted."""
    if preview is None:
        return f"<p>{_esc(text(lang, 'no_data'))}</p>"
    if preview.errors:
        return message(preview.errors[0], "error")
    return "".join(_formatted(r, preview.eos) for r in preview.rows)


def duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``; None -> ``?``."""
    if seconds is None:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status_word(status: str | None, lang: str) -> str:
    words = {
        "finished": "finished",
        "running": "running",
        "interrupted": "interrupted",
        "failed": "failed_status",
    }
    return text(lang, words[status]) if status in words else (status or "")


def progress_view(progress: Progress | None, lang: str) -> str:
    """The progress bar (training steps), ETA, tokens/s, the current stage and the run's status."""
    if progress is None:
        return f"<p>{_esc(text(lang, 'not_started'))}</p>"
    pct = round(100 * progress.fraction)
    facts = [text(lang, "step_of", step=progress.step, total=progress.max_steps)]
    if progress.eta_s is not None:
        facts.append(text(lang, "eta", eta=duration(progress.eta_s)))
    if progress.tokens_per_s is not None:
        facts.append(text(lang, "tok_s", tps=f"{progress.tokens_per_s:,.0f}"))
    stage = ""
    if progress.stage:
        where = f"[{progress.stage_number}/{progress.stage_count}]"
        stage = f"{_esc(text(lang, 'stage'))}: {where} {_esc(progress.stage)}"
    status = (
        f"{_esc(text(lang, 'status'))}: {_esc(_status_word(progress.status, lang))}"
        if progress.status
        else ""
    )
    return (
        f'<div class="ts-progress" data-step="{progress.step}" data-max-steps="{progress.max_steps}" '
        f'data-status="{_esc(progress.status or "")}">'
        f'<div class="ts-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{pct}">'
        f'<div class="ts-fill" style="width:{pct}%"></div></div>'
        f"<p>{pct}% &middot; {' &middot; '.join(_esc(f) for f in facts)}</p>"
        f"<p>{stage}</p><p>{status}</p></div>"
    )


def series_name(key: str) -> str:
    """A loss curve's legend name, in both languages: the plot keeps the series it first drew, so the
    names must not change with the language switch."""
    return f"{text('en', key)} / {text('zh', key)}"


def curve_points(progress: Progress | None) -> list[dict]:
    """The loss curve as rows {step, loss, series} (training loss per step, held-out loss where measured).

    Empty until training has logged a step: the plot draws only the series present in its first data,
    so it must start with the training loss (the held-out loss before training comes earlier).
    """
    if progress is None or not progress.train:
        return []
    train, held = series_name("series_train"), series_name("series_held_out")
    rows = [{"step": s, "loss": v, "series": train} for s, v in progress.train]
    return rows + [{"step": s, "loss": v, "series": held} for s, v in progress.held_out]


def compare_view(report: ReportData | None, lang: str) -> str:
    """Each probe question with its answer before and after training, side by side."""
    if report is None or not any(p.before or p.after for p in report.probes):
        return f"<p>{_esc(text(lang, 'no_answers'))}</p>"
    head = "".join(f"<th>{_esc(text(lang, k))}</th>" for k in ("question", "before", "after"))
    body = "".join(
        f'<tr><td class="ts-q">{_esc(p.question)}</td><td class="ts-before">{_esc(p.before or "")}</td>'
        f'<td class="ts-after">{_esc(p.after or "")}</td></tr>'
        for p in report.probes
    )
    return f'<table class="ts-compare"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def verification_view(report: ReportData | None, result, lang: str) -> str:
    """Pass/fail with the numbers (``result``: the run's ``VerifyResult``, or None before verification)."""
    if result is None:
        return f"<p>{_esc(text(lang, 'not_verified'))}</p>"
    if result.could_not_run is not None:
        return message(text(lang, "could_not_run", reason=result.could_not_run), "error")
    verdict = text(lang, "passed" if result.passed else "failed")
    yes_no = text(lang, "yes" if result.tokenization_identical else "no")
    rows = [
        ("GGUF", f"{result.gguf} ({result.file_type})"),
        (text(lang, "tokenization"), yes_no),
        (text(lang, "top1"), f"{result.top1_agreement:.1%} (>= {result.top1_threshold:.0%})"),
        (text(lang, "greedy"), f"{result.greedy_matches} / {result.prompts}"),
    ]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    kind = "pass" if result.passed else "fail"
    return (
        f'<p class="ts-verdict ts-{kind}"><b>{_esc(verdict)}</b></p><table class="ts-verify">{cells}</table>'
    )


def commands_view(report: ReportData | None, output_folder, lang: str) -> str:
    """The exact ``ollama create`` / ``ollama run`` (and llama.cpp) commands, as Markdown code blocks."""
    if report is None or not report.gguf_file:
        return text(lang, "no_export")
    import shlex

    # the report's commands are relative to the output folder: go there first
    blocks = [f"```sh\ncd {shlex.quote(str(output_folder))}\n```"]
    blocks += [f"{caption}:\n\n```sh\n{commands}\n```" for caption, commands in run_commands(report)]
    return "\n\n".join(blocks)


def export_files(report: ReportData | None, output_folder) -> list[str]:
    """The files offered for download: the GGUF and the Modelfile (absolute paths in the output folder)."""
    if report is None:
        return []
    from pathlib import Path

    return [str(Path(output_folder) / rel) for rel in (report.gguf_file, report.modelfile) if rel]
