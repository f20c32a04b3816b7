"""The run pipeline end to end (``tunesmith run`` on the embedded default): every artifact, and Ctrl-C then resume.

Real parts only: the built-in SmolLM2-135M-Instruct, the shipped MedQuAD rows, TRL training, the GGUF
writer, llama.cpp verification and headless Chromium for the report. The runs are shortened with
``--set`` (a few steps, short answers, fewer rows) so the whole file takes a few minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunesmith.export._llama_cpp_child import FAULT_ENV
from tunesmith.recipe.pipeline import STAGES

QUICK = [
    "--set", "training.max_steps=3",
    "--set", "training.warmup_steps=0",
    "--set", "training.gradient_accumulation_steps=1",
    "--set", "training.save_steps=1",
    "--set", "data.max_rows=120",
    "--set", "model.max_seq_length=128",
    "--set", "generation.max_new_tokens=16",
    "--set", "probes=[What are common causes of fatigue?, What is anemia?]",
]  # fmt: skip
# the tests of stopping and resuming answer no held-out questions (that stage is checked by the finished run)
NO_SCORING = ["--set", "generation.held_out_questions=0"]


def _command(folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tunesmith.cli.main",
        "run",
        *QUICK,
        "--set",
        f"output.folder={folder}",
        *extra,
    ]


def _env() -> dict[str, str]:
    # One OpenMP thread: on a shared CI machine, two spinning threads per process on busy cores made
    # training ~5x slower (measured); these tests check behaviour, not speed.
    return {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}


def _state(folder: Path) -> dict:
    return json.loads((folder / "run-state.json").read_text())


@pytest.fixture(scope="module")
def crashed_verification(tmp_path_factory, llama_cpp_works) -> tuple[Path, subprocess.CompletedProcess]:
    """A run whose llama.cpp child kills itself with SIGSEGV (fault injection): verification cannot run."""
    folder = tmp_path_factory.mktemp("run") / "medical-en"
    cmd = _command(folder, "--set", "export.formats=[gguf, lora]")
    env = {**_env(), FAULT_ENV: "segv"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    return folder, proc


@pytest.fixture(scope="module")
def finished_run(crashed_verification) -> tuple[Path, subprocess.CompletedProcess]:
    """The same command again, with a working llama.cpp: it resumes, verifies and finishes."""
    folder, _ = crashed_verification
    cmd = _command(folder, "--set", "export.formats=[gguf, lora]")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc


def test_a_llama_cpp_crash_still_writes_the_report_and_keeps_the_gguf(crashed_verification) -> None:
    folder, proc = crashed_verification
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "crashed with signal 11 (SIGSEGV)" in proc.stderr and "-mno-amx-int8" in proc.stderr
    assert "run the same command again to verify" in proc.stderr
    assert "llama.cpp verification: crashes (signal 11)" in proc.stdout  # the check stage said so first
    assert len(list((folder / "gguf").glob("*.Q8_0.gguf"))) == 1 and (folder / "gguf" / "Modelfile").is_file()
    state = _state(folder)
    assert state["status"] == "unverified" and "verify" not in state["completed"]
    md = (folder / "report.md").read_text()
    assert "could not run" in md and "SIGSEGV" in md and "not verified" in md
    assert "could not run" in (folder / "report.html").read_text()


def test_every_stage_prints_a_headed_line(finished_run) -> None:
    _, proc = finished_run
    for number in range(1, len(STAGES) + 1):
        assert f"[{number}/{len(STAGES)}] " in proc.stdout
    assert "Asking the probe questions before training" in proc.stdout


def test_report_has_answers_before_and_after_and_the_losses(finished_run) -> None:
    folder, _ = finished_run
    state = _state(folder)
    assert state["status"] == "finished"
    before, after = state["results"]["probes_before"]["answers"], state["results"]["probes_after"]["answers"]
    assert len(before) == len(after) == 2 and all(a.strip() for a in before + after)
    md = (folder / "report.md").read_text()
    assert "What are common causes of fatigue?" in md and "What is anemia?" in md
    assert " ".join(after[0].split()[:3]) in md and " ".join(before[0].split()[:3]) in md
    loss_before = state["results"]["lora"]["eval_loss_before"]
    loss_after = state["results"]["eval_after"]["eval_loss_after"]
    assert 0 < loss_before < 20 and 0 < loss_after < 20
    assert f"| before training | {loss_before:.4f} |" in md and f"| after training | {loss_after:.4f} |" in md
    assert (folder / "training" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![training loss](training/loss.png)" in md
    assert "3 optimizer step(s); global batch 2 = 2 per device x 1 accumulation x 1 process(es)" in md


def test_gguf_passed_verification_and_modelfile_points_at_it(finished_run) -> None:
    folder, proc = finished_run
    assert "Resuming the unfinished run" in proc.stdout and "Training for 3 steps ... done" not in proc.stdout
    ggufs = list((folder / "gguf").glob("*.Q8_0.gguf"))
    assert len(ggufs) == 1
    verification = _state(folder)["results"]["verify"]
    assert verification["passed"] is True
    modelfile = (folder / "gguf" / "Modelfile").read_text()
    assert (
        f"FROM ./{ggufs[0].name}" in modelfile and "TEMPLATE" in modelfile and "PARAMETER stop" in modelfile
    )
    md = (folder / "report.md").read_text()
    assert f"ollama create {ggufs[0].name.split('.')[0]} -f Modelfile" in md
    assert f"llama-cli -m gguf/{ggufs[0].name}" in md
    assert (folder / "lora" / "adapter_config.json").is_file() and (
        folder / "lora" / "adapter_model.safetensors"
    ).is_file()


def test_the_gguf_answers_in_llama_cpp(finished_run) -> None:
    folder, _ = finished_run
    gguf = next((folder / "gguf").glob("*.Q8_0.gguf"))
    # A chat completion as a user would ask one, in its own process (llama.cpp is native code).
    ask = (
        "import sys; from llama_cpp import Llama; llm = Llama(model_path=sys.argv[1], n_ctx=256, verbose=False); "
        "out = llm.create_chat_completion(messages=[{'role': 'user', 'content': 'What are common causes of "
        "fatigue?'}], max_tokens=8, temperature=0); print(out['choices'][0]['message']['content'])"
    )
    done = subprocess.run([sys.executable, "-c", ask, str(gguf)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


def test_report_html_renders_in_chromium(finished_run, browse) -> None:
    folder, _ = finished_run
    seen = browse(folder / "report.html")
    assert len(seen["images"]) == 1 and seen["images"][0]["complete"] and seen["images"][0]["width"] > 300
    assert seen["missingAnchors"] == []
    files = [h for h in seen["links"] if not h.startswith("#")]
    assert files and all((folder / h).is_file() for h in files)


def test_a_second_run_in_the_same_folder_is_refused(finished_run) -> None:
    folder, _ = finished_run
    proc = subprocess.run(_command(folder), capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "holds a finished run" in proc.stderr and "Traceback" not in proc.stderr


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (code {proc.returncode}) before {text!r}:\n{path.read_text()[-3000:]}"
            )
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"no {text!r} within {timeout} s")


def test_ctrl_c_during_training_then_the_same_command_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "medical-en"
    # this test is about stopping and resuming: the adapter alone is exported, nothing is verified or scored
    cmd = _command(folder, "--set", "training.max_steps=4", "--set", "export.formats=[lora]", *NO_SCORING)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env())
        _wait_for(log, "0/4 [", proc)  # the progress bar: the trainer is running
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=600)
    first = log.read_text()
    assert code == 130, first[-3000:]
    assert "Stopped at step" in first and "Run the same command again to resume" in first
    state = _state(folder)
    assert state["status"] == "interrupted" and "train" not in state["completed"]
    checkpoints = sorted((folder / "training").glob("checkpoint-*"))
    assert checkpoints, "Ctrl-C must leave a checkpoint"
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert 1 <= stopped_at < 4
    assert (folder / "training" / "loss.png").is_file()
    assert "interrupted" in (folder / "report.md").read_text()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env())
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming the unfinished run" in second.stdout
    assert f"resuming from training/checkpoint-{stopped_at}" in second.stdout
    assert "Asking the probe questions before training ... done in the earlier attempt" in second.stdout
    state = _state(folder)
    assert state["status"] == "finished" and state["results"]["train"]["steps"] == 4
    steps = [s for s, _ in state["results"]["train"]["losses"]]
    assert steps == sorted(set(steps)) and steps[-1] == 4, "the loss history continues without repeats"


def test_a_second_ctrl_c_stops_at_once_and_says_where_a_rerun_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "medical-en"
    # long steps (16 micro-batches), so the second Ctrl-C lands inside the step the first one waits for
    cmd = _command(
        folder,
        *("--set", "training.max_steps=50", "--set", "training.gradient_accumulation_steps=16"),
        *("--set", "export.formats=[lora]", *NO_SCORING),
    )
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env())
        _wait_for(log, "0/50 [", proc)  # the progress bar ("training:" also ends the held-out line)
        proc.send_signal(signal.SIGINT)
        _wait_for(log, "press Ctrl-C again to stop at once", proc)
        proc.send_signal(signal.SIGINT)
        # A bound, not a speed measurement: a hang or a long shutdown fails it (measured: under 1 s).
        code = proc.wait(timeout=15)
    text = log.read_text()
    assert code == 130 and "Traceback" not in text, text[-3000:]
    assert "Stopped at once during stage 6/" in text and "Run the same command again to resume" in text
    assert _state(folder)["status"] == "interrupted"
    assert "interrupted" in (folder / "report.md").read_text()


def test_held_out_answers_are_scored_with_rouge_l_before_and_after(
    crashed_verification, finished_run
) -> None:
    folder, _ = finished_run
    _, first = crashed_verification  # the run that measured it (the second resumed at verification)
    from tunesmith.recipe.quality import mean_rouge_l

    lora, after = _state(folder)["results"]["lora"], _state(folder)["results"]["eval_after"]
    references, before = lora["held_out_references"], lora["held_out_answers"]
    assert 1 <= len(before) == len(after["held_out_answers"]) == len(references) <= 8
    data = Path(__file__).parents[2] / "tunesmith/assets/data/medquad_en.jsonl"
    answers = [" ".join(json.loads(line)["output"].split()) for line in data.read_text().splitlines()]
    for reference in references:  # the rows' own answers (cut where max_seq_length cut the row)
        assert any(a.startswith(" ".join(reference.split())[:60]) for a in answers), reference
    rouge_before = mean_rouge_l(references, before)
    rouge_after = mean_rouge_l(references, after["held_out_answers"])
    assert f"{rouge_before:.4f} before -> {rouge_after:.4f} after" in first.stdout
    md = (folder / "report.md").read_text()
    assert "## Answer quality: ROUGE-L" in md
    assert (
        f"| before training | {rouge_before:.4f} |" in md and f"| after training | {rouge_after:.4f} |" in md
    )
