"""The one error ``tunesmith run --gpus N`` prints names the rank that caused the failure."""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.recipe.launch import _failure_message


def _failed_run(tmp_path: Path, failures: list[dict], rank_errors: dict[int, str]) -> str:
    """The launcher's message when the agent wrote ``failures`` and the ranks wrote ``rank_errors``."""
    for rank, text in rank_errors.items():
        (tmp_path / f"rank-{rank}.txt").write_text(text)
    (tmp_path / "failures.json").write_text(json.dumps(failures))
    return _failure_message(tmp_path, 2, 1, tmp_path / "run")


def test_a_rank_killed_from_outside_is_named_over_its_peers_echo(tmp_path) -> None:
    # Rank 1 was OOM-killed; rank 0 then lost its connection to it and wrote that error before the agent
    # saw rank 1 die. The cause is rank 1.
    message = _failed_run(
        tmp_path,
        failures=[
            {"rank": 1, "exitcode": -9, "signal": "SIGKILL"},
            {"rank": 0, "exitcode": 2, "signal": None},
        ],
        rank_errors={0: "Stage 6/11 failed: Connection reset by peer"},
    )
    assert message.startswith("Training process rank 1 of 2 was killed by SIGKILL (out of memory")
    assert "same command resumes" in message and str(tmp_path / "run") in message


def test_a_rank_error_is_given_as_the_rank_wrote_it(tmp_path) -> None:
    # Rank 1 stopped on bad data; the agent then stopped rank 0 with SIGTERM. Rank 1's own words come back.
    message = _failed_run(
        tmp_path,
        failures=[
            {"rank": 1, "exitcode": 2, "signal": None},
            {"rank": 0, "exitcode": -15, "signal": "SIGTERM"},
        ],
        rank_errors={1: "Row 7 of data.jsonl has no 'answer' field."},
    )
    assert message == "Process rank 1 of 2 stopped: Row 7 of data.jsonl has no 'answer' field."
