"""``tunesmith chat``: one-shot and interactive, streaming; bad input exits 2 without a traceback."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import pytest

from tunesmith.cli.main import main


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tunesmith", "chat", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_one_shot_prompt_streams_the_default_models_answer(default_model_path):
    result = run_cli("--prompt", "What are common causes of fatigue?", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Fatigue is a complex condition")


def test_interactive_loop_answers_until_exit(tiny_llama_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nand again\n/exit\nnever asked\n"))
    assert main(["chat", str(tiny_llama_dir), "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(">>> ") == 3, "two questions answered, then /exit"
    assert "Chatting with" in captured.err


def test_missing_model_path_exits_2_without_traceback(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    result = run_cli(str(missing), "--prompt", "hi")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_id_with_an_unreachable_hub_exits_2_naming_the_id(tmp_path):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_ETAG_TIMEOUT": "2",
    }
    result = run_cli("some-org/some-model", "--prompt", "hi", env=env)
    assert result.returncode == 2
    assert "'some-org/some-model'" in result.stderr and "hub cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_id_while_offline_exits_2(capsys):
    assert main(["chat", "some-org/some-model", "--prompt", "hi"]) == 2
    assert "'some-org/some-model'" in capsys.readouterr().err


def test_bad_max_new_tokens_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--max-new-tokens", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_hub_id_in_the_local_hub_cache_loads_offline(tmp_path, tiny_llama_dir):
    import shutil

    revision = "0" * 40
    repo = tmp_path / "hub" / "models--some-org--tiny-llama"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    result = run_cli("some-org/tiny-llama", "--prompt", "hi", "--max-new-tokens", "2", env=env)
    assert result.returncode == 0, result.stderr


def test_long_conversations_drop_the_oldest_turns(tiny_llama_dir):
    from transformers import AutoTokenizer

    from tunesmith.cli.chat import _fit
    from tunesmith.generation.chat import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    turns = [
        {"role": "user", "content": "first question " * 20},
        {"role": "assistant", "content": "answer " * 20},
    ]
    latest = [{"role": "user", "content": "latest question"}]
    budget = prompt_ids(tokenizer, latest).shape[1] + 5
    assert _fit(turns * 3 + latest, tokenizer, budget) == latest
    assert _fit(turns + latest, tokenizer, 10_000) == turns + latest
