"""Creating a trainer sends nothing over the network: TRL's usage ping is refused, and bitsandbytes does
not fetch its CPU kernel from the hub when it is imported (``tunesmith._offline_bitsandbytes``).

A real HTTP server on 127.0.0.1 stands in for the hub (``HF_ENDPOINT``), and a child process creates the
trainers with every opt-out removed from its environment (TRL also skips the ping when ``CI`` is set). The
same child creating TRL's own trainer does reach the server, so the test can see a ping when one is sent.
The kernel fetch happens only on CPUs with AVX512-BF16, such as the one CI runs on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

OPT_OUTS = ("CI", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")

CHILD = """
import sys, time, urllib.request
first = sys.argv[4]
if first == "transformers":  # huggingface_hub reads its settings before tunesmith can set a default
    import trl, transformers
import tunesmith
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from tunesmith.training import SFTTrainer, TrainingArguments

folder, out, endpoint = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder)
data = Dataset.from_dict({"text": ["Question: hi\\nAnswer: hello" + tokenizer.eos_token] * 4})
def create(cls, args):
    cls(model=AutoModelForCausalLM.from_pretrained(folder), processing_class=tokenizer, train_dataset=data,
        args=args)
    time.sleep(2)  # the ping goes out from a background thread
if first == "transformers":
    create(SFTTrainer, TrainingArguments(output_dir=out + "/a", max_steps=1, report_to="none"))
    urllib.request.urlopen(endpoint + "/marker").read()
create(trl.SFTTrainer, trl.SFTConfig(output_dir=out + "/b", max_steps=1, report_to="none", bf16=False))
"""


class _Recorder(BaseHTTPRequestHandler):
    paths: list[str] = []

    def _answer(self) -> None:
        self.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_hub():
    """A local HTTP server standing in for the hub; yields (endpoint, the request paths it saw)."""
    _Recorder.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.paths
    server.shutdown()


def _online(endpoint: str, hf_home) -> dict[str, str]:
    """This environment without any opt-out, with ``endpoint`` as the hub and a hub cache of its own."""
    env = {k: v for k, v in os.environ.items() if k not in OPT_OUTS}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home)}


def _create_trainers(folder, tmp_path, endpoint: str, first: str) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(tmp_path), endpoint, first],
        capture_output=True, text=True, timeout=300, env=_online(endpoint, tmp_path / "hf"),
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    assert "kernels-community" not in child.stderr, child.stderr[-3000:]


def test_tunesmith_trainer_sends_no_ping_even_after_transformers_was_imported_first(
    tiny_llama_dir, tmp_path, fake_hub
):
    endpoint, paths = fake_hub
    _create_trainers(tiny_llama_dir, tmp_path, endpoint, first="transformers")
    assert "/marker" in paths, paths
    before_marker = paths[: paths.index("/marker")]
    assert before_marker == [], f"tunesmith's SFTTrainer reached the network: {before_marker}"
    after = paths[paths.index("/marker") + 1 :]
    assert any("telemetry/trl" in p for p in after), f"the control (TRL's own trainer) sent no ping: {paths}"


def test_importing_tunesmith_first_silences_trls_own_trainers_too(tiny_llama_dir, tmp_path, fake_hub):
    endpoint, paths = fake_hub
    _create_trainers(tiny_llama_dir, tmp_path, endpoint, first="tunesmith")
    assert paths == [], f"a trainer reached the network: {paths}"


def test_the_cli_reaches_no_server_and_warns_of_no_kernel_download(tmp_path, fake_hub):
    endpoint, paths = fake_hub
    child = subprocess.run(
        [sys.executable, "-m", "tunesmith", "check"],
        capture_output=True, text=True, timeout=300, env=_online(endpoint, tmp_path / "hf"),
    )  # fmt: skip
    assert "4-bit" in child.stdout, child.stdout + child.stderr[-3000:]
    assert paths == [], f"tunesmith check reached the network: {paths}"
    assert "kernels-community" not in child.stderr, child.stderr[-3000:]
