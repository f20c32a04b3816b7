"""The run report: Markdown and a self-contained HTML page that a real browser renders with its plot."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from tunesmith.recipe.report import ExportFile, ProbeAnswer, ReportData, write_report  # noqa: E402

PLOT_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first line colour


def _loss_png(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(1, 31), [3 - 0.05 * i for i in range(30)], linewidth=3)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@pytest.fixture
def finished(tmp_path: Path) -> ReportData:
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "medical-en.Q8_0.gguf").write_bytes(b"\0" * 2048)
    (tmp_path / "gguf" / "Modelfile").write_text("FROM ./medical-en.Q8_0.gguf\n")
    return ReportData(
        title="tunesmith run: medical-en",
        status="finished",
        config_yaml="model:\n  name: smollm2-135m-instruct\n",
        environment={"python": "3.11", "device": "cpu"},
        data_stats={
            "training rows": 180,
            "held-out rows": 20,
            "tokens": 51234,
            "truncated rows": 3,
            "duplicate rows": 1,
        },
        loss_png=_loss_png(tmp_path / "loss.png"),
        eval_loss_before=2.5,
        eval_loss_after=2.0,
        train_steps=60,
        train_batch="global batch 16 = 4 per device x 2 accumulation x 2 process(es) (DDP)",
        probes=[
            ProbeAnswer(
                "What are common causes of fatigue?", "Fatigue is <complex> | hard", "Anemia and poor sleep."
            ),
            ProbeAnswer("What is anemia?", "A condition.", "Too few red blood cells."),
        ],
        exports=[
            ExportFile("gguf/medical-en.Q8_0.gguf", "gguf", 2048),
            ExportFile("gguf/Modelfile", "modelfile", 28),
        ],
        verification={"tokenization identical": True, "top-1 agreement": 1.0, "passed": True},
        ollama_name="medical-en",
        modelfile="gguf/Modelfile",
        gguf_file="gguf/medical-en.Q8_0.gguf",
        llama_prompt="<|im_start|>user\nWhat are common causes of fatigue?<|im_end|>\n<|im_start|>assistant\n",
    )


def test_markdown_shows_what_changed_and_how_to_run_it(finished: ReportData, tmp_path: Path) -> None:
    md_path, _ = write_report(finished, tmp_path)
    md = md_path.read_text()
    for probe in finished.probes:
        assert probe.question in md and probe.after in md
    assert "Fatigue is &lt;complex&gt; \\| hard" in md  # answers cannot break the table or inject HTML
    assert "| before training | 2.5000 |" in md and "| after training | 2.0000 |" in md and "-20.0%" in md
    assert "![training loss](loss.png)" in md
    assert (
        "60 optimizer step(s); global batch 16 = 4 per device x 2 accumulation x 2 process(es) (DDP)." in md
    )
    assert "ollama create medical-en -f Modelfile" in md and "ollama run medical-en" in md
    assert "llama-cli -m gguf/medical-en.Q8_0.gguf" in md
    assert "| truncated rows | 3 |" in md and "| duplicate rows | 1 |" in md
    assert "2.0 KiB" in md


def test_html_is_self_contained(finished: ReportData, tmp_path: Path) -> None:
    _, html_path = write_report(finished, tmp_path)
    page = html_path.read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", page), (
        "the report must not load anything from the network"
    )
    assert "<style>" in page and 'src="data:image/png;base64,' in page
    # the same page renders from any folder: the image travels inside it
    moved = tmp_path / "elsewhere" / "report.html"
    moved.parent.mkdir()
    moved.write_text(page)
    assert 'src="data:image/png;base64,' in moved.read_text()


def test_chromium_renders_the_plot_and_every_link_resolves(
    finished: ReportData, tmp_path: Path, browse
) -> None:
    _, html_path = write_report(finished, tmp_path)
    seen = browse(html_path)
    assert seen["title"] == "tunesmith run: medical-en"
    png_height, png_width = mpimg.imread(finished.loss_png).shape[:2]
    assert seen["images"] == [{"complete": True, "width": png_width, "height": png_height}]
    assert seen["missingAnchors"] == []
    files = [h for h in seen["links"] if not h.startswith("#")]
    assert files == ["gguf/medical-en.Q8_0.gguf", "gguf/Modelfile"]
    assert all((tmp_path / h).is_file() for h in files)
    assert "Anemia and poor sleep." in seen["dom"] and "Fatigue is &lt;complex&gt; | hard" in seen["dom"]


def test_screenshot_shows_the_loss_curve(finished: ReportData, tmp_path: Path, screenshot) -> None:
    _, html_path = write_report(finished, tmp_path)
    pixels = mpimg.imread(screenshot(html_path, tmp_path / "shot.png"))[..., :3]
    blue = (abs(pixels - [c / 255 for c in PLOT_BLUE]).max(axis=-1) < 0.08).sum()
    assert blue > 500, "the loss curve's line is not visible in the rendered page"


def test_unfinished_run_says_what_was_not_reached(tmp_path: Path) -> None:
    data = ReportData(
        title="t",
        status="stopped at stage 5/10 (training): interrupted",
        config_yaml="",
        probes=[ProbeAnswer("Q?", before="A.")],
    )
    md_path, html_path = write_report(data, tmp_path)
    md = md_path.read_text()
    assert "| Q? | A. | (not reached) |" in md
    assert "No loss curve" in md and "Nothing was exported." in md and "optimizer step" not in md
    assert 'class="status bad"' in html_path.read_text()
