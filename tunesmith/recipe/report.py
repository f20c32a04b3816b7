"""The run report: ``report.md`` and a self-contained ``report.html`` in the output folder.

Both show the same facts: what ran (config, environment), on what (data statistics), how training
went (loss curve, held-out loss before/after), what changed (each probe's answer before and after, side
by side), what was written (export files, sizes, verification) and how to run the result (Ollama and
llama.cpp commands). The HTML has its CSS inline and the loss curve as a ``data:`` URI, so it opens
offline and can be mailed as one file; its only links are anchors within the page and files of the run.
"""

from __future__ import annotations

import base64
import html
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith._atomic import atomic_file

__all__ = ["ProbeAnswer", "ExportFile", "ReportData", "write_report", "render_markdown", "render_html"]


@dataclass
class ProbeAnswer:
    """One probe question and the model's greedy answers before and after fine-tuning."""

    question: str
    before: str | None = None
    after: str | None = None


@dataclass
class ExportFile:
    """A file or folder the run wrote (path relative to the output folder)."""

    path: str
    kind: str  # "gguf", "modelfile", "merged", "lora", ...
    size_bytes: int


@dataclass
class ReportData:
    """Everything the report shows; ``None`` marks a stage that did not run (yet)."""

    title: str
    status: str  # "finished", or what stopped the run
    config_yaml: str
    environment: dict[str, str] = field(default_factory=dict)
    data_stats: dict[str, object] = field(default_factory=dict)
    loss_png: Path | None = None
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    probes: list[ProbeAnswer] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    verification: dict[str, object] | None = None
    ollama_name: str | None = None
    modelfile: str | None = None  # relative to the output folder
    gguf_file: str | None = None  # relative to the output folder
    llama_prompt: str | None = None  # the first probe rendered in the training prompt format
    stage_seconds: dict[str, float] = field(default_factory=dict)


def write_report(data: ReportData, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder`` (atomically); return their paths."""
    folder = Path(folder)
    md_path, html_path = folder / "report.md", folder / "report.html"
    with atomic_file(md_path, "w") as handle:
        handle.write(render_markdown(data, folder))
    with atomic_file(html_path, "w") as handle:
        handle.write(render_html(data, folder))
    return md_path, html_path


# -- shared facts --------------------------------------------------------------------------------------


def _size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _eval_rows(data: ReportData) -> list[tuple[str, str]]:
    """(label, value) rows of the held-out loss table."""
    before, after = data.eval_loss_before, data.eval_loss_after
    rows = [("before training", _num(before)), ("after training", _num(after))]
    if before is not None and after is not None:
        change = after - before
        rows.append(("change", f"{change:+.4f} ({change / before:+.1%})" if before else f"{change:+.4f}"))
    return rows


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def _verification_rows(data: ReportData) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in (data.verification or {}).items()]


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _time_rows(data: ReportData) -> list[tuple[str, str]]:
    """Seconds per stage (this attempt) and their total."""
    rows = [(k, f"{v:.1f} s") for k, v in data.stage_seconds.items()]
    return [*rows, ("total", f"{sum(data.stage_seconds.values()):.1f} s")]


def _commands(data: ReportData) -> list[tuple[str, str]]:
    """(title, shell commands) to run the exported model in Ollama and llama.cpp."""
    out: list[tuple[str, str]] = []
    if data.modelfile and data.ollama_name:
        folder = str(Path(data.modelfile).parent)
        question = data.probes[0].question if data.probes else "Hello!"
        lines = [f"cd {shlex.quote(folder)}"] if folder != "." else []
        lines += [
            f"ollama create {data.ollama_name} -f {Path(data.modelfile).name}",
            f"ollama run {data.ollama_name} {shlex.quote(question)}",
        ]
        out.append(("Ollama (run these in the output folder)", "\n".join(lines)))
    if data.gguf_file:
        gguf = shlex.quote(data.gguf_file)
        out.append(
            ("llama.cpp, chat with the template stored in the GGUF", f"llama-cli -m {gguf} --jinja -cnv")
        )
        if data.llama_prompt:
            out.append(
                (
                    "llama.cpp, one answer in the exact training prompt format",
                    f"llama-cli -m {gguf} -no-cnv -n 256 --temp 0 -e -p {shlex.quote(_escaped(data.llama_prompt))}",
                )
            )
    return out


def _escaped(text: str) -> str:
    """Text with backslashes and newlines written as llama.cpp's ``-e`` escapes (one shell line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


# -- Markdown ------------------------------------------------------------------------------------------


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def cell(text: str) -> str:
        return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(data: ReportData, folder: Path) -> str:
    """The report as Markdown (the loss curve is linked as a file beside it)."""
    parts = [f"# {data.title}", f"**Status:** {data.status}"]
    parts += ["## Probes: before and after", _md_probes(data)]
    parts += ["## Held-out loss", _md_table(("", "eval loss"), _eval_rows(data))]
    parts += ["## Training loss"]
    if data.loss_png and Path(data.loss_png).is_file():
        parts.append(f"![training loss]({_rel(data.loss_png, folder)})")
    else:
        parts.append("No loss curve: training did not log a step.")
    parts += ["## Data", _md_table(("", "value"), [(k, _fmt(v)) for k, v in data.data_stats.items()])]
    parts += ["## Exported files", _md_exports(data)]
    parts += ["## Verification in llama.cpp", _md_verification(data)]
    parts += ["## Run it", _md_commands(data)]
    parts += ["## Environment", _md_table(("", "value"), list(data.environment.items()))]
    if data.stage_seconds:
        rows = _time_rows(data)
        parts += ["## Time per stage", _md_table(("stage", "time"), rows)]
    parts += ["## Config", "```yaml\n" + data.config_yaml.rstrip() + "\n```"]
    return "\n\n".join(parts) + "\n"


def _md_probes(data: ReportData) -> str:
    if not data.probes:
        return "No probes were configured."
    rows = [(p.question, _answer(p.before), _answer(p.after)) for p in data.probes]
    return _md_table(("question", "before fine-tuning", "after fine-tuning"), rows)


def _answer(text: str | None) -> str:
    return "(not reached)" if text is None else (text.strip() or "(empty answer)")


def _md_exports(data: ReportData) -> str:
    if not data.exports:
        return "Nothing was exported."
    return _md_table(
        ("file", "kind", "size"), [(f"`{e.path}`", e.kind, _size(e.size_bytes)) for e in data.exports]
    )


def _md_verification(data: ReportData) -> str:
    if data.verification is None:
        return "Not run."
    return _md_table(("check", "result"), _verification_rows(data))


def _md_commands(data: ReportData) -> str:
    blocks = [f"{title}:\n\n```sh\n{text}\n```" for title, text in _commands(data)]
    return (
        "\n\n".join(blocks)
        if blocks
        else "No GGUF was exported, so there is nothing to run in Ollama or llama.cpp."
    )


def _rel(path: str | os.PathLike, folder: Path) -> str:
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# -- HTML ----------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;
  margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:32px 0 10px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
nav a{margin-right:14px;color:#2456a6;text-decoration:none}nav a:hover{text-decoration:underline}
.status{display:inline-block;padding:3px 10px;border-radius:12px;background:#e3f1e6;color:#145c28;font-weight:600}
.status.bad{background:#fbe4e4;color:#8a1c1c}
table{border-collapse:collapse;background:#fff;margin:6px 0}td,th{border:1px solid #dde1e6;padding:6px 10px;text-align:left;vertical-align:top}
th{background:#eef1f5}
.probe{background:#fff;border:1px solid #dde1e6;border-radius:8px;margin:12px 0;padding:12px 14px}
.probe h3{margin:0 0 8px;font-size:16px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.pair div{white-space:pre-wrap;background:#fafbfc;border:1px solid #e6e9ee;border-radius:6px;padding:8px 10px;font-size:14px}
.pair .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#5b6573;margin-bottom:4px;border:0;padding:0;background:none}
pre{background:#1f2430;color:#e8ecf2;padding:12px 14px;border-radius:6px;overflow-x:auto;white-space:pre-wrap}
img.loss{max-width:100%;background:#fff;border:1px solid #dde1e6;border-radius:6px}
.good{color:#145c28;font-weight:600}.bad{color:#8a1c1c;font-weight:600}
"""

_SECTIONS = (
    ("probes", "Probes"),
    ("loss", "Loss"),
    ("data", "Data"),
    ("exports", "Exported files"),
    ("verify", "Verification"),
    ("run", "Run it"),
    ("env", "Environment"),
    ("config", "Config"),
)


def render_html(data: ReportData, folder: Path) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    bad = "" if data.status == "finished" else " bad"
    nav = "".join(f'<a href="#{key}">{esc(label)}</a>' for key, label in _SECTIONS)
    body = [
        f"<h1>{esc(data.title)}</h1>",
        f'<p><span class="status{bad}">{esc(data.status)}</span></p>',
        f"<nav>{nav}</nav>",
        _section("probes", "Probes: before and after", _html_probes(data)),
        _section("loss", "Loss", _html_loss(data, folder)),
        _section(
            "data", "Data", _html_table(("", "value"), [(k, _fmt(v)) for k, v in data.data_stats.items()])
        ),
        _section("exports", "Exported files", _html_exports(data, folder)),
        _section("verify", "Verification in llama.cpp", _html_verification(data)),
        _section("run", "Run it", _html_commands(data)),
        _section("env", "Environment", _html_env(data)),
        _section("config", "Config", f"<pre>{esc(data.config_yaml)}</pre>"),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(data.title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def _section(key: str, title: str, inner: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{inner}</section>'


def _html_table(header: tuple[str, ...], rows: list[tuple[str, ...]], raw: bool = False) -> str:
    esc = (lambda s: s) if raw else html.escape
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_probes(data: ReportData) -> str:
    if not data.probes:
        return "<p>No probes were configured.</p>"
    cards = []
    for p in data.probes:
        before, after = html.escape(_answer(p.before)), html.escape(_answer(p.after))
        cards.append(
            f'<div class="probe"><h3>{html.escape(p.question)}</h3><div class="pair">'
            f'<div><div class="label">before fine-tuning</div>{before}</div>'
            f'<div><div class="label">after fine-tuning</div>{after}</div></div></div>'
        )
    return "".join(cards)


def _html_loss(data: ReportData, folder: Path) -> str:
    table = _html_table(("held-out loss", ""), _eval_rows(data))
    png = Path(data.loss_png) if data.loss_png else None
    if png is None or not png.is_file():
        return table + "<p>No loss curve: training did not log a step.</p>"
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
    return table + f'<p><img class="loss" alt="training loss per step" src="{uri}"></p>'


def _html_exports(data: ReportData, folder: Path) -> str:
    if not data.exports:
        return "<p>Nothing was exported.</p>"
    rows = []
    for e in data.exports:
        link = f'<a href="{html.escape(e.path, quote=True)}"><code>{html.escape(e.path)}</code></a>'
        exists = (folder / e.path).exists()
        rows.append(
            (
                link if exists else f"<code>{html.escape(e.path)}</code>",
                html.escape(e.kind),
                _size(e.size_bytes),
            )
        )
    return _html_table(("file", "kind", "size"), rows, raw=True)


def _html_verification(data: ReportData) -> str:
    if data.verification is None:
        return "<p>Not run.</p>"
    rows = []
    for key, value in _verification_rows(data):
        cls = {"yes": "good", "no": "bad"}.get(value, "")
        rows.append(
            (
                html.escape(key),
                f'<span class="{cls}">{html.escape(value)}</span>' if cls else html.escape(value),
            )
        )
    return _html_table(("check", "result"), rows, raw=True)


def _html_commands(data: ReportData) -> str:
    blocks = [
        f"<p>{html.escape(title)}:</p><pre>{html.escape(text)}</pre>" for title, text in _commands(data)
    ]
    return (
        "".join(blocks) or "<p>No GGUF was exported, so there is nothing to run in Ollama or llama.cpp.</p>"
    )


def _html_env(data: ReportData) -> str:
    parts = [_html_table(("", "value"), list(data.environment.items()))]
    if data.stage_seconds:
        parts.append(_html_table(("stage", "time"), _time_rows(data)))
    return "".join(parts)
