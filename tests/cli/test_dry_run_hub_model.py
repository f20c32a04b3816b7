"""`tunesmith run --dry-run` with a hub model id: its config.json is fetched alone (or read from the hub
cache offline) and checked, so a wrong id or an unsupported family is refused before any download.

A real HTTP server on 127.0.0.1 stands in for the hub (``HF_ENDPOINT``; nothing may reach the real one
here), answering as the hub does: file metadata on HEAD, the file on GET, 404s with the hub's error codes.
The client side is the real huggingface_hub, with a fresh cache per test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

COMMIT = "0" * 39 + "1"
SMALL_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, vocab_size=256)  # fmt: skip
HUGE_LLAMA = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)  # fmt: skip


class _Hub(BaseHTTPRequestHandler):
    repos: dict[str, dict[str, bytes]] = {}
    seen: list[str] = []

    def _answer(self, body: bool) -> None:
        self.seen.append(self.path)
        # /{org}/{name}/resolve/{revision}/{file}
        parts = self.path.split("?")[0].strip("/").split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        files = self.repos.get(repo)
        if len(parts) < 5 or parts[2] != "resolve" or files is None:
            return self._missing("RepoNotFound")
        if filename not in files:
            return self._missing("EntryNotFound")
        data = files[filename]
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _missing(self, code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path):
    """Yields a function running the dry run for a model id against the local hub (online or offline)."""
    _Hub.repos = {
        "org/llama-like": {"config.json": json.dumps(SMALL_LLAMA).encode()},
        "org/bert-like": {"config.json": json.dumps({"model_type": "bert"}).encode()},
        "org/gguf-only": {"model.Q4_K_M.gguf": b"GGUF"},
        # a 70B Llama: ~280 GB in float32, more than any CI machine has
        "org/huge-llama": {"config.json": json.dumps(HUGE_LLAMA).encode(), "model.safetensors": b"x"},
    }
    _Hub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def dry_run(model: str, *, offline: bool = False, command: list[str] | None = None):
        """The dry run for ``model`` (or the CLI ``command``) against the local hub."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path)}
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        cmd = [sys.executable, "-m", "tunesmith.cli.main", "run", "--dry-run", "--set", "data.file=qa.jsonl"]
        cmd += ["--set", f"model.name={model}", "--set", "output.folder=out"]
        if command is not None:
            cmd = [sys.executable, "-m", "tunesmith.cli.main", *command]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)

    yield dry_run
    server.shutdown()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("org/no-such-model", ["The hub has no model 'org/no-such-model'", "Check the id"]),
        ("org/bert-like", ["of type 'bert'", "Supported model types", "llama"]),
        ("org/gguf-only", ["'org/gguf-only' has no config.json", "pass that path instead"]),
    ],
)
def test_a_hub_id_the_run_would_fail_on_is_refused_by_the_dry_run(hub, model: str, expected: list[str]):
    proc = hub(model)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert _Hub.seen and all(p.endswith("/config.json") for p in _Hub.seen), "nothing but config.json"


def test_a_supported_hub_model_passes_and_then_passes_offline_from_the_cache(hub):
    online = hub("org/llama-like")
    assert online.returncode == 0 and "Config OK" in online.stdout, online.stderr
    offline = hub("org/llama-like", offline=True)
    assert offline.returncode == 0 and "Config OK" in offline.stdout, offline.stderr


def test_offline_with_an_uncached_hub_id_passes_with_a_note_that_it_was_not_checked(hub):
    # the dry run may be offline and the run online: it says what it could not check, and passes
    proc = hub("org/llama-like", offline=True)
    assert proc.returncode == 0 and "Config OK" in proc.stdout, proc.stderr
    assert "the model was not checked" in proc.stderr and "not in the local hub cache" in proc.stderr


def test_a_hub_model_too_large_for_this_machine_is_refused_from_its_config_alone(hub):
    """The dry run, and a real load (``tunesmith chat``), say it does not fit before any weight is fetched."""
    proc = hub("org/huge-llama")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "does not fit: its weights need about 282" in proc.stderr, proc.stderr  # GB, in float32
    assert "load_in_4bit=True (about" in proc.stderr
    _Hub.seen.clear()
    chat = hub("org/huge-llama", command=["chat", "org/huge-llama", "--prompt", "hi", "--device", "cpu"])
    assert chat.returncode != 0 and "does not fit" in chat.stderr and "Traceback" not in chat.stderr
    assert _Hub.seen and all(p.endswith("/config.json") for p in _Hub.seen), "nothing but config.json"
