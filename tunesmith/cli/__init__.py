"""tunesmith.cli: the ``tunesmith`` command; argument parsing only, one module per subcommand."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "main": "tunesmith.cli.main",
    },
)
