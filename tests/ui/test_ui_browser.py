"""``tunesmith ui`` end to end in a real headless Chromium (Debian's, driven by Playwright; nothing is
downloaded): open the page, refuse a too-large upload, list the rows of a malformed file and refuse to
start, preview a small JSONL as the model sees it, train the embedded model for 3 steps (live curve,
progress to the end, a second Start refused, Stop then Resume), compare before/after answers, chat, and
download a GGUF that loads in llama.cpp. One app server and one training run for the whole file.

Screenshots of each screen go to docs/ui/ (``TUNESMITH_UI_SCREENSHOTS`` names another folder).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("TUNESMITH_UI_SCREENSHOTS", REPO / "docs" / "ui"))
QUESTION = "What is anemia?"
# One 3-step run of the embedded model with probes, held-out answers before and after, export and
# verification, on a busy 2-core machine: it outlasted 480 s on 2 AVX2-only cores (float32 decoding there).
TRAINING_S = 900


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on 127.0.0.1 over a fresh folder, uploads limited to 1 MB: (url, UiState)."""
    from tunesmith.ui.server import prepare_environment, serve

    # one OpenMP thread in the training child: on a busy 2-core machine, spinning threads slow it down
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = prepare_environment(tmp_path_factory.mktemp("ui") / "runs")
    from tunesmith.ui.app import UiState
    from tunesmith.ui.session import Workspace

    state = UiState(Workspace(root, max_upload_mb=1))
    port = _free_port()
    demo = serve(state, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}", state
    if state.job.running:
        state.job.process.kill()
    demo.close()


@pytest.fixture(scope="module")
def page(app):
    """One Chromium page on the app, kept for the whole file (the tests run in order, like a user)."""
    from playwright.sync_api import sync_playwright

    url, _ = app
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        tab.set_default_timeout(60_000)
        tab.goto(url)
        _tab(tab, "2 Data")  # a tab's components are drawn when it is first shown
        tab.wait_for_selector("#ts-data-preview .ts-layout", timeout=120_000)  # the built-in example, checked
        _tab(tab, "1 Model")
        yield tab
        browser.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _message(page) -> str:
    return page.inner_text("#ts-message")


def _upload(page, path: Path) -> None:
    _tab(page, "2 Data")
    if not page.locator("#ts-upload input[type=file]").count():  # a file is shown: remove it first
        page.locator("#ts-upload").get_by_label("Clear").first.click()
    page.set_input_files("#ts-upload input[type=file]", str(path))


def _rows(n: int) -> list[dict]:
    from tunesmith.data import builtin_dataset_path

    lines = builtin_dataset_path("medquad_en").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def test_the_page_opens_with_the_environment_facts(page) -> None:
    assert "fine-tune a model on your own questions" in page.inner_text("h2")
    expect(page.locator("#ts-env")).to_contain_text("llama.cpp verification")
    facts = page.inner_text("#ts-env")
    for row in ("device", "bf16", "4-bit (QLoRA)", "llama.cpp verification"):
        assert row in facts
    _shot(page, "1-model")


def test_a_too_large_upload_is_refused(page, tmp_path) -> None:
    big = tmp_path / "big.jsonl"
    row = json.dumps({"instruction": "q" * 500, "output": "a" * 500})
    big.write_text("\n".join([row] * 1200), encoding="utf-8")  # 1.2 MB: over the 1 MB limit
    _upload(page, big)
    expect(page.get_by_text(re.compile("exceed the maximum allowed size")).first).to_be_visible()
    assert "big.jsonl" not in page.inner_text("#ts-data-preview")


def test_a_malformed_jsonl_shows_the_row_errors_and_does_not_start(page, app, tmp_path) -> None:
    _, state = app
    bad = tmp_path / "bad.jsonl"
    good, second = _rows(2)
    bad.write_text(
        "\n".join(json.dumps(r) for r in (good, {**second, "output": ""}, {"instruction": "Why?"})),
        encoding="utf-8",
    )
    _upload(page, bad)
    errors = page.wait_for_selector("#ts-data-preview .ts-errors").inner_text()
    assert "bad.jsonl, row 2, field 'output' is empty" in errors
    assert "bad.jsonl, row 3, field 'output' is missing" in errors
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + '\n{"instruction": "unclosed\n', encoding="utf-8")
    _upload(page, broken)
    expect(page.locator("#ts-data-preview .ts-errors")).to_contain_text("broken.jsonl")
    assert "line 2" in page.inner_text("#ts-data-preview")
    _tab(page, "4 Train")
    page.click("#ts-start")
    expect(page.locator("#ts-message")).to_contain_text("training did not start")
    assert state.job.process is None
    assert not list(state.workspace.root.glob("run-*/run.yaml"))


def test_an_uploaded_jsonl_is_previewed_as_the_model_sees_it(page, tmp_path) -> None:
    small = tmp_path / "small.jsonl"
    rows = _rows(24)
    small.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    _tab(page, "1 Model")
    page.fill("#ts-max-seq input", "256")
    _upload(page, small)
    page.wait_for_selector("#ts-data-preview .ts-counts")
    preview = page.inner_text("#ts-data-preview")
    assert "Layout recognised: alpaca" in preview
    assert "training rows\t23" in preview and "held-out rows\t1" in preview  # 24 rows, 5% held out
    first = page.inner_text("#ts-data-preview pre.ts-row >> nth=0")
    assert "<|im_start|>user" in first and "<|im_start|>assistant" in first
    assert page.inner_text("#ts-data-preview pre.ts-row >> nth=0 >> mark.ts-eos") == "<|im_end|>"
    _shot(page, "2-data")
    _tab(page, "3 Prompt")
    page.get_by_label("My own prompt template").check()
    page.fill("#ts-prompt-template textarea", "### Q:\n{instruction}\n\n### A:\n{output}")
    expect(page.locator("#ts-prompt-preview")).to_contain_text("### Q:")
    assert "### A:" in page.inner_text("#ts-prompt-preview pre.ts-row")
    _shot(page, "3-prompt")
    page.get_by_label("A chat template").check()  # train in the model's own format
    expect(page.locator("#ts-prompt-preview")).to_contain_text("<|im_start|>user")


def _progress(page) -> dict:
    return page.evaluate("() => ({...document.querySelector('#ts-progress .ts-progress')?.dataset})")


@pytest.fixture(scope="module")
def trained(page, app):
    """Start a 3-step run from the page, press Start again while it runs, Stop it after a step, Resume it,
    and wait for it to finish."""
    _, state = app
    _tab(page, "4 Train")
    for box, value in (("max-steps", "3"), ("grad-accum", "1"), ("warmup-steps", "0"), ("save-steps", "1"),
                       ("max-new-tokens", "16")):  # fmt: skip
        page.fill(f"#ts-{box} input", value)
    page.fill("#ts-probes textarea", QUESTION)
    page.click("#ts-start")
    expect(page.locator("#ts-message")).to_contain_text("Training started")
    page.click("#ts-start")
    expect(page.locator("#ts-message")).to_contain_text("already going")
    second_start = _message(page)
    page.wait_for_function(
        "() => Number(document.querySelector('#ts-progress .ts-progress')?.dataset.step) >= 1",
        timeout=TRAINING_S * 1000,
    )
    page.click("#ts-stop")
    expect(page.locator("#ts-message")).to_contain_text("a checkpoint is kept")
    page.wait_for_selector("#ts-progress [data-status=interrupted]", timeout=120_000)
    stopped = _progress(page)
    checkpoints = sorted(p.name for p in state.current_run.glob("output/training/checkpoint-*"))
    page.click("#ts-resume")
    expect(page.locator("#ts-message")).to_contain_text("Resuming the run", timeout=90_000)  # after it ends
    ended = "#ts-progress :is([data-status=finished], [data-status=failed], [data-status=unverified])"
    page.wait_for_selector(ended, timeout=TRAINING_S * 1000)
    log = (state.current_run / "ui-run.log").read_text()
    assert _progress(page).get("status") == "finished", log[-4000:]  # the run's own words when it did not
    return {"second_start": second_start, "stopped": stopped, "checkpoints": checkpoints, "log": log}


def test_a_second_start_while_training_shows_a_clear_message(trained) -> None:
    assert "A training run is already going" in trained["second_start"]
    assert "only one run at a time" in trained["second_start"]


def test_stop_keeps_a_checkpoint_and_resume_continues_from_it(trained) -> None:
    step = int(trained["stopped"]["step"])
    assert 1 <= step < 3, trained["stopped"]
    assert f"checkpoint-{step}" in trained["checkpoints"]
    assert f"resuming from training/checkpoint-{step}" in trained["log"]


def test_training_draws_the_loss_curve_and_the_progress_reaches_the_end(page, trained) -> None:
    progress = page.inner_text("#ts-progress")
    assert "100%" in progress and "step 3 of 3" in progress
    assert _progress(page)["step"] == "3"
    # two lines (training loss at steps 1-2, held-out loss before and after), each drawn through its points
    lines = page.wait_for_function(
        """() => [...document.querySelectorAll('#ts-curve svg .mark-line path')]
                 .map(p => p.getAttribute('d') || '').filter(d => /^M[^M]*L/.test(d)).length >= 2"""
    )
    assert lines.json_value(), page.inner_html("#ts-curve")[:3000]
    axis = page.inner_text("#ts-curve")
    assert "step" in axis and "loss" in axis and "training loss" in axis and "held-out loss" in axis
    _shot(page, "4-train")


def test_the_after_answers_appear_beside_the_before_answers(page, trained) -> None:
    _tab(page, "5 Compare")
    row = page.wait_for_selector("table.ts-compare tbody tr")
    assert row.inner_text().startswith(QUESTION)
    assert page.inner_text("td.ts-before").strip() and page.inner_text("td.ts-after").strip()
    page.fill("#ts-chat-input textarea", QUESTION)
    page.click("#ts-send")
    page.wait_for_selector("#ts-chatbot .bot, #ts-chatbot [data-testid=bot]", timeout=180_000)
    _shot(page, "5-compare")


def test_export_serves_a_verified_gguf_that_loads_in_llama_cpp(
    page, trained, tmp_path, llama_cpp_works
) -> None:
    from tunesmith.export.llama_cpp import self_test

    _tab(page, "6 Export")
    assert "PASSED" in page.inner_text("#ts-verification")
    commands = page.inner_text("#ts-commands")
    assert "ollama create run-" in commands and "ollama run run-" in commands
    link = page.wait_for_selector("#ts-downloads a[href*='.gguf']")
    response = page.request.get(link.get_attribute("href"))
    assert response.ok
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(response.body())
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert self_test(gguf)["batch_tokens"] >= 2
    _shot(page, "6-export")


def test_nothing_outside_the_app_folder_is_served(page, app) -> None:
    url, _ = app
    for path in ("/etc/passwd", str(REPO / "pyproject.toml")):
        response = page.request.get(f"{url}/gradio_api/file={path}")
        assert response.status in (403, 404), (path, response.status)


def test_the_language_switch_turns_the_page_chinese(page) -> None:
    page.get_by_label("中文").check()
    page.wait_for_selector("role=tab[name='1 模型']")
    assert "开始训练" in page.inner_text("#ts-start")
    _shot(page, "7-chinese")
    page.get_by_label("English").check()
    page.wait_for_selector("role=tab[name='1 Model']")
