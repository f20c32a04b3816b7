"""``python -m tunesmith``: the environment check (same as ``tunesmith check``); with arguments, the CLI."""

import sys

from tunesmith.cli.main import console_main

if __name__ == "__main__":
    console_main(sys.argv[1:] or ["check"])
