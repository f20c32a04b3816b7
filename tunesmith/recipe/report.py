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
from importlib import resources
from pathlib import Path

from tunesmith._atomic import atomic_file

__all__ = [
    "ProbeAnswer",
    "ExportFile",
    "ReportData",
    "Section",
    "report_sections",
    "write_report",
    "report_paths",
    "run_commands",
    "render_markdown",
    "render_html",
]


@dataclass
class ProbeAnswer:
    """One probe question and the model's greedy answers before and after fine-tuning."""

    question: str
    before: str | None = None
    after: str | None = None


@dataclass
class HeldOutAnswer:
    """A held-out question, its reference answer, and the greedy answers before and after training with
    their ROUGE-L against the reference (``after`` None: not reached)."""

    question: str
    reference: str
    before: str
    after: str | None
    rouge_l_before: float
    rouge_l_after: float | None


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
    method: str = "sft"
    rewards_png: Path | None = None  # DPO/ORPO reward margin and accuracy; GRPO rewards and lengths
    samples: dict[str, list[dict]] = field(default_factory=dict)  # GRPO: {"start": [...], "end": [...]}
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    train_steps: int | None = None
    train_batch: str | None = None  # "global batch 8 = 2 per device x 4 accumulation x 1 process(es) ..."
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    probes: list[ProbeAnswer] = field(default_factory=list)
    held_out: list[HeldOutAnswer] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    verification: dict[str, object] | None = None
    ollama_name: str | None = None
    modelfile: str | None = None  # relative to the output folder
    gguf_file: str | None = None  # relative to the output folder
    llama_prompt: str | None = None  # the first probe rendered in the training prompt format
    stage_seconds: dict[str, float] = field(default_factory=dict)


def report_paths(folder: Path) -> tuple[Path, Path]:
    """Where the report of the run in ``folder`` lives: ``report.md`` and ``report.html``."""
    return folder / "report.md", folder / "report.html"


def write_report(data: ReportData, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``folder`` (atomically); return their paths."""
    folder = Path(folder)
    md_path, html_path = report_paths(folder)
    with atomic_file(md_path, "w") as handle:
        handle.write(render_markdown(data, folder))
    with atomic_file(html_path, "w") as handle:
        handle.write(render_html(data, folder))
    return md_path, html_path


# -- the report as data: sections of blocks ----------------------------------------------------------


@dataclass(frozen=True)
class Paragraph:
    """A sentence or two of plain text."""

    text: str


@dataclass(frozen=True)
class FileLink:
    """A table cell naming a file of the run (relative path); a link where the file exists."""

    path: str
    exists: bool


@dataclass(frozen=True)
class Flag:
    """A yes/no table cell (the HTML colours it)."""

    value: bool


Cell = str | FileLink | Flag


@dataclass(frozen=True)
class Table:
    """A table with a header row."""

    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]]


@dataclass(frozen=True)
class Image:
    """A picture: the file (embedded in the HTML) and its path relative to the report (linked in Markdown)."""

    file: Path
    link: str
    alt: str


@dataclass(frozen=True)
class Code:
    """Literal text: shell commands or the config."""

    text: str
    language: str


@dataclass(frozen=True)
class Answers:
    """Each question with its answers side by side (before and after fine-tuning; a reference first)."""

    labels: tuple[str, ...]  # question, then one label per answer column
    rows: list[tuple[str, ...]]


Block = Paragraph | Table | Image | Code | Answers


@dataclass(frozen=True)
class Section:
    """One part of the report: an anchor ``key``, a heading, a short name for the HTML menu, its blocks."""

    key: str
    title: str
    short: str
    blocks: list[Block]


def report_sections(data: ReportData, folder: Path) -> list[Section]:
    """The whole report, in order; each renderer only maps the block kinds to its markup."""
    sections = [
        Section("probes", "Probes: before and after", "Probes", _probes(data)),
        *(
            [Section("quality", "Answer quality: ROUGE-L", "Quality", _quality(data))]
            if data.held_out
            else []
        ),
        Section("loss", "Loss", "Loss", _loss(data, folder)),
        *([Section("rewards", "Rewards", "Rewards", _rewards(data, folder))] if data.method != "sft" else []),
        Section("data", "Data", "Data", [_pairs(data.data_stats)]),
        Section("exports", "Exported files", "Exported files", _exports(data, folder)),
        Section("verify", "Verification in llama.cpp", "Verification", _verification(data)),
        Section("run", "Run it", "Run it", _commands(data)),
        Section("env", "Environment", "Environment", [_pairs(data.environment)]),
    ]
    if data.stage_seconds:
        sections.append(
            Section("time", "Time per stage", "Time", [Table(("stage", "time"), _time_rows(data))])
        )
    sections.append(Section("config", "Config", "Config", [Code(data.config_yaml.rstrip(), "yaml")]))
    return sections


def _probes(data: ReportData) -> list[Block]:
    if not data.probes:
        return [Paragraph("No probes were configured.")]
    rows = [(p.question, _answer(p.before), _answer(p.after)) for p in data.probes]
    return [Answers(("question", "before fine-tuning", "after fine-tuning"), rows)]


def _quality(data: ReportData) -> list[Block]:
    """The mean ROUGE-L before and after, the answers that repeat a sentence, and each held-out answer."""
    from tunesmith.recipe.quality import mean_score, repeated_sentences

    rows, n = data.held_out, len(data.held_out)
    before = mean_score([r.rouge_l_before for r in rows])
    mean_after = mean_score([r.rouge_l_after for r in rows])
    blocks: list[Block] = [
        Paragraph(
            f"The greedy answers to {n} held-out question(s), each scored against the held-out row's own "
            "answer with ROUGE-L (the longest run of the reference's words the answer keeps in order, as an "
            "F-measure: 0 shares nothing, 1 is the reference)."
        )
    ]
    table: list[tuple[Cell, ...]] = [("before training", f"{before:.4f}")]
    if mean_after is not None:
        table += [("after training", f"{mean_after:.4f}"), ("change", f"{mean_after - before:+.4f}")]
    blocks.append(Table(("", "mean ROUGE-L"), table))
    asked = [*data.probes, *rows]

    def repeating(texts: list[str | None]) -> int:
        return sum(bool(text and repeated_sentences(text)) for text in texts)

    blocks.append(
        Paragraph(
            f"Answers that repeat a sentence (probes and held-out questions, {len(asked)} in all): "
            f"{repeating([a.before for a in asked])} before training, {repeating([a.after for a in asked])} "
            "after."
        )
    )
    labels = ("held-out question", "reference answer", "before fine-tuning", "after fine-tuning")
    answers_block = [
        (r.question, r.reference, _scored(r.before, r.rouge_l_before), _scored(r.after, r.rouge_l_after))
        for r in rows
    ]
    blocks.append(Answers(labels, answers_block))
    return blocks


def _scored(answer: str | None, score: float | None) -> str:
    return _answer(answer) if score is None else f"{_answer(answer)}\n\n(ROUGE-L {score:.3f})"


def _answer(text: str | None) -> str:
    return "(not reached)" if text is None else (text.strip() or "(empty answer)")


def _loss(data: ReportData, folder: Path) -> list[Block]:
    before, after = data.eval_loss_before, data.eval_loss_after
    rows: list[tuple[Cell, ...]] = [("before training", _num(before)), ("after training", _num(after))]
    if before is not None and after is not None:
        change = after - before
        rows.append(("change", f"{change:+.4f} ({change / before:+.1%})" if before else f"{change:+.4f}"))
    blocks: list[Block] = [Table(("", "held-out loss"), rows)]
    if data.train_steps is not None and data.train_batch:
        blocks.append(Paragraph(f"{data.train_steps} optimizer step(s); {data.train_batch}."))
    if data.loss_png and Path(data.loss_png).is_file():
        return [*blocks, Image(Path(data.loss_png), _rel(data.loss_png, folder), "training loss")]
    return [*blocks, Paragraph("No loss curve: training did not log a step.")]


def _rewards(data: ReportData, folder: Path) -> list[Block]:
    """The reward curves (per function for GRPO), and GRPO's sample completions at the start and the end."""
    what = {
        "grpo": "mean reward of each reward function, and completion lengths",
        "dpo": "reward margin (chosen minus rejected, relative to the reference) and reward accuracy",
        "orpo": "reward margin (chosen minus rejected) and reward accuracy",
    }[data.method]
    blocks: list[Block] = [Paragraph(f"{data.method.upper()}: {what}, per logged step.")]
    if data.rewards_png and Path(data.rewards_png).is_file():
        blocks.append(Image(Path(data.rewards_png), _rel(data.rewards_png, folder), "reward curves"))
    else:
        blocks.append(Paragraph("No reward curves: training did not log a step."))
    rows = [
        (f"{when} (step {s.get('step', '?')})", _answer(s.get("completion")),
         ", ".join(f"{k} {v:.2f}" for k, v in s.get("rewards", {}).items() if isinstance(v, (int, float))))
        for when in ("start", "end") for s in data.samples.get(when, [])
    ]  # fmt: skip
    if rows:
        blocks.append(Table(("when", "sample completion", "rewards"), rows))
    return blocks


def _num(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.4f}"


def _pairs(values: dict[str, object]) -> Table:
    return Table(("", "value"), [(str(k), _cell(v)) for k, v in values.items()])


def _cell(value: object) -> Cell:
    if isinstance(value, bool):
        return Flag(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _exports(data: ReportData, folder: Path) -> list[Block]:
    if not data.exports:
        return [Paragraph("Nothing was exported.")]
    rows = [(FileLink(e.path, (folder / e.path).exists()), e.kind, _size(e.size_bytes)) for e in data.exports]
    return [Table(("file", "kind", "size"), rows)]


def _size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _verification(data: ReportData) -> list[Block]:
    if data.verification is None:
        return [Paragraph("Not run.")]
    return [Table(("check", "result"), [(str(k), _cell(v)) for k, v in data.verification.items()])]


def _time_rows(data: ReportData) -> list[tuple[Cell, ...]]:
    """Seconds per stage (this attempt) and their total."""
    rows = [(k, f"{v:.1f} s") for k, v in data.stage_seconds.items()]
    return [*rows, ("total", f"{sum(data.stage_seconds.values()):.1f} s")]


def run_commands(data: ReportData) -> list[tuple[str, str]]:
    """How to run the exported model in Ollama and llama.cpp: (caption, shell commands) pairs."""
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
            prompt = shlex.quote(_escaped(data.llama_prompt))
            out.append(
                (
                    "llama.cpp, one answer in the exact training prompt format",
                    f"llama-cli -m {gguf} -no-cnv -n 256 --temp 0 -e -p {prompt}",
                )
            )
    return out


def _commands(data: ReportData) -> list[Block]:
    out = run_commands(data)
    if not out:
        return [Paragraph("No GGUF was exported, so there is nothing to run in Ollama or llama.cpp.")]
    return [block for title, text in out for block in (Paragraph(f"{title}:"), Code(text, "sh"))]


def _escaped(text: str) -> str:
    """Text with backslashes and newlines written as llama.cpp's ``-e`` escapes (one shell line)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def _rel(path: str | os.PathLike, folder: Path) -> str:
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# -- Markdown ------------------------------------------------------------------------------------------


def render_markdown(data: ReportData, folder: Path) -> str:
    """The report as Markdown (the loss curve is linked as a file beside it)."""
    parts = [f"# {data.title}", f"**Status:** {data.status}"]
    for section in report_sections(data, folder):
        parts.append(f"## {section.title}")
        parts += [_md_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        return _md_table(block.header, block.rows)
    if isinstance(block, Answers):
        return _md_table(block.labels, block.rows)
    if isinstance(block, Image):
        return f"![{block.alt}]({block.link})"
    return f"```{block.language}\n{block.text}\n```"


def _md_table(header: tuple[str, ...], rows: list[tuple[Cell, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Flag):
        text = "yes" if cell.value else "no"
    else:
        text = f"`{cell.path}`" if isinstance(cell, FileLink) else cell
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", "<br>")


# -- HTML ----------------------------------------------------------------------------------------------


def _css() -> str:
    """The report's style sheet (``tunesmith/assets/report.css``), inlined so the page stands alone."""
    return (resources.files("tunesmith") / "assets" / "report.css").read_text(encoding="utf-8")


def render_html(data: ReportData, folder: Path) -> str:
    """The report as one self-contained HTML page."""
    esc = html.escape
    sections = report_sections(data, folder)
    bad = "" if data.status == "finished" else " bad"
    nav = "".join(f'<a href="#{s.key}">{esc(s.short)}</a>' for s in sections)
    body = [
        f"<h1>{esc(data.title)}</h1>",
        f'<p><span class="status{bad}">{esc(data.status)}</span></p>',
        f"<nav>{nav}</nav>",
    ]
    for s in sections:
        inner = "".join(_html_block(block) for block in s.blocks)
        body.append(f'<section id="{s.key}"><h2>{esc(s.title)}</h2>{inner}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(data.title)}</title><style>{_css()}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Answers):
        return "".join(_html_answers(block.labels, row) for row in block.rows)
    if isinstance(block, Image):
        uri = "data:image/png;base64," + base64.b64encode(block.file.read_bytes()).decode("ascii")
        return f'<p><img class="loss" alt="{html.escape(block.alt)}" src="{uri}"></p>'
    return f"<pre>{html.escape(block.text)}</pre>"


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Flag):
        return '<span class="good">yes</span>' if cell.value else '<span class="bad">no</span>'
    if isinstance(cell, FileLink):
        code = f"<code>{html.escape(cell.path)}</code>"
        return f'<a href="{html.escape(cell.path, quote=True)}">{code}</a>' if cell.exists else code
    return html.escape(cell)


def _html_answers(labels: tuple[str, ...], row: tuple[str, ...]) -> str:
    question, *texts = (html.escape(text) for text in row)
    pair = "".join(
        f'<div><div class="label">{html.escape(label)}</div>{text}</div>'
        for label, text in zip(labels[1:], texts, strict=True)
    )
    columns = f' style="grid-template-columns:repeat({len(texts)},1fr)"' if len(texts) != 2 else ""
    return f'<div class="probe"><h3>{question}</h3><div class="pair"{columns}>{pair}</div></div>'
