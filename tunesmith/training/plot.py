"""The loss curve as a PNG (training loss per logged step, held-out loss where it was measured), and panels
of other logged metrics (reward margin and accuracy, rewards per function, completion lengths)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunesmith._atomic import atomic_file

__all__ = ["plot_loss_curve", "plot_metric_panels", "read_log"]


def read_log(log_path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines training log (a half-written last line is skipped)."""
    records = []
    path = Path(log_path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _moving_average(values, window: int) -> list[float]:
    """Mean of each value and up to ``window - 1`` values before it."""
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1)
        for i in range(len(values))
    ]


def plot_loss_curve(
    records: list[dict], png_path: str | os.PathLike, title: str = "Training loss"
) -> Path | None:
    """Draw loss against step from log records and write ``png_path`` atomically; None if nothing to draw."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    held_out = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and "step" in r]
    if not train and not held_out:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=110)
    axes = figure.add_subplot()
    if train:
        steps, losses = zip(*train, strict=True)
        axes.plot(steps, losses, label="training loss", color="#1f77b4", linewidth=1.0, alpha=0.45)
        if len(losses) >= 10:  # single steps are noisy; the trend is what people look for
            axes.plot(
                steps,
                _moving_average(losses, 5),
                label="training loss (5-step mean)",
                color="#1f77b4",
                linewidth=2.0,
            )
    if held_out:
        axes.plot(*zip(*held_out, strict=True), "o--", label="held-out loss", color="#d62728")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png_path = Path(png_path)
    with atomic_file(png_path) as handle:
        figure.savefig(handle, format="png")
    png_path.chmod(0o644)  # the temporary file was private; the picture is for people to open
    return png_path


def plot_metric_panels(
    records: list[dict],
    png_path: str | os.PathLike,
    panels: list[tuple[str, list[tuple[str, str]]]],
    title: str = "Training metrics",
) -> Path | None:
    """One panel per ``(y label, [(log key, line label), ...])``: each key against step, its held-out
    value (``eval_<key>``) as points; written atomically to ``png_path``; None if no key was logged."""
    drawn = [
        (
            ylabel,
            [(key, label) for key, label in lines if any(key in r or f"eval_{key}" in r for r in records)],
        )
        for ylabel, lines in panels
    ]
    drawn = [(ylabel, lines) for ylabel, lines in drawn if lines]
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a file
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 2.6 * len(drawn) + 0.6), dpi=110)
    for index, (ylabel, lines) in enumerate(drawn):
        axes = figure.add_subplot(len(drawn), 1, index + 1)
        for key, label in lines:
            points = [
                (r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and "step" in r
            ]
            if points:
                axes.plot(*zip(*points, strict=True), label=label, linewidth=1.5)
            held = [
                (r["step"], r[f"eval_{key}"])
                for r in records
                if isinstance(r.get(f"eval_{key}"), (int, float))
            ]
            if held:
                axes.plot(*zip(*held, strict=True), "o--", label=f"{label} (held-out)")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.axes[0].set_title(title)
    figure.axes[-1].set_xlabel("step")
    figure.tight_layout()
    png_path = Path(png_path)
    with atomic_file(png_path) as handle:
        figure.savefig(handle, format="png")
    png_path.chmod(0o644)
    return png_path
