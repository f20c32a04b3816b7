"""The child process ``tunesmith run --gpus N`` starts: torch's own launcher (torchrun's elastic agent) for
N ranks of ``tunesmith run``, no restarts, on this machine.

It is ``torch.distributed.run`` with its standalone settings, called through torch's launcher API so that a
failed rank comes back as data: the agent writes which rank failed and how (exit code, signal) as JSON to
the file named first on its command line, and exits 1 quietly; the launcher turns that into one error.
It dies with its parent (a killed ``tunesmith run`` leaves no agent), and the ranks die with it. It takes
no action on Ctrl-C: the launcher passes each one on to the ranks (see :mod:`tunesmith.recipe.launch`).

    python -m tunesmith.recipe._agent FAILURES.json N [tunesmith run arguments ...]
"""

from __future__ import annotations

import json
import signal
import sys
import uuid
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import elastic_launch
from torch.distributed.run import config_from_args, get_args_parser

from tunesmith.training.distributed import exit_with_parent

# How often the agent looks at its ranks: a rank that died is noticed (and the others stopped) this soon.
MONITOR_INTERVAL_S = 0.5


def launch_config(processes: int, rank_arguments: list[str]):
    """torchrun's ``--standalone --nproc-per-node N --max-restarts 0`` for ``-m tunesmith.cli.main run``,
    with Ctrl-C left to the launcher."""
    args = get_args_parser().parse_args(
        [
            f"--nproc-per-node={processes}",
            "--max-restarts=0",
            f"--monitor-interval={MONITOR_INTERVAL_S}",
            "--rdzv-backend=c10d",
            "--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT",  # not SIGINT: see main()
            "--rdzv-endpoint=localhost:0",
            f"--rdzv-id={uuid.uuid4()}",
            "-m",
            "tunesmith.cli.main",
            "run",
            *rank_arguments,
        ]
    )
    return config_from_args(args)


def main(argv: list[str]) -> int:
    """Run the ranks; on failure write what failed to ``argv[0]`` and return 1."""
    failures_path, processes, rank_arguments = Path(argv[0]), int(argv[1]), argv[2:]
    exit_with_parent()
    # The launcher starts this process in its own session, out of a terminal's reach; a SIGINT sent here all
    # the same would make torch's agent end every rank, unless told which signals to handle (launch_config).
    # A Python handler, not SIG_IGN (which the ranks would inherit), leaves Ctrl-C to the launcher.
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    config, entrypoint, arguments = launch_config(processes, rank_arguments)
    try:
        elastic_launch(config=config, entrypoint=entrypoint)(*arguments)
    except SignalException:  # stopped by the launcher before any rank had started: the ranks are ended
        return 1
    except ChildFailedError as err:
        # The cause first: the ranks the agent stopped afterwards died of its SIGTERM (timestamps are whole
        # seconds, so they often tie with the cause).
        def cause_first(item):
            rank, failure = item
            stopped = failure.exitcode == -signal.SIGTERM
            return (stopped, failure.timestamp, rank)

        ordered = sorted(err.failures.items(), key=cause_first)
        failed = [
            {"rank": rank, "exitcode": f.exitcode, "signal": f.signal_name() if f.exitcode < 0 else None}
            for rank, f in ordered
        ]
        failures_path.write_text(json.dumps(failed), encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
