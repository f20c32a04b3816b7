"""``python -m tunesmith``: the environment check (same as ``tunesmith check``)."""

from tunesmith.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["check"]))
