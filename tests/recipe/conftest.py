"""Fixtures for the recipe tests: a headless Chromium that loads a page and reports what it saw."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]

# Appended to a *copy* of the page: records what the browser rendered into the DOM that --dump-dom prints.
_PROBE_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const images = [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const links = [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href"));
  const missingAnchors = links.filter(h => h.startsWith("#") && !document.getElementById(h.slice(1)));
  const out = document.createElement("pre");
  out.id = "probe-result";
  out.textContent = JSON.stringify({images, links, missingAnchors, title: document.title,
                                    bodyHeight: document.body.scrollHeight});
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "Chromium is not installed; install Debian's `chromium` package (apt-get install chromium)."
        )
    return exe


@pytest.fixture(scope="session")
def browse():
    """``browse(html_path) -> dict``: images (complete, naturalWidth), links and missing anchors of a page."""

    def run(page: Path) -> dict:
        probe = page.with_name(f".probe-{page.name}")
        probe.write_text(
            page.read_text(encoding="utf-8").replace("</body>", _PROBE_SCRIPT + "</body>"), encoding="utf-8"
        )
        try:
            cmd = [_chromium(), *CHROMIUM_FLAGS, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            probe.unlink()
        found = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout, re.S)
        assert found, f"Chromium did not render the page:\n{proc.stderr[-2000:]}"
        result = json.loads(html.unescape(found.group(1)))
        result["dom"] = proc.stdout
        return result

    return run


@pytest.fixture(scope="session")
def screenshot():
    """``screenshot(html_path, png_path)``: a 1200x1600 headless Chromium screenshot of the page."""

    def run(page: Path, png: Path) -> Path:
        cmd = [_chromium(), *CHROMIUM_FLAGS, "--window-size=1200,1600", f"--screenshot={png}", page.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert png.is_file(), f"Chromium wrote no screenshot:\n{proc.stderr[-2000:]}"
        return png

    return run
