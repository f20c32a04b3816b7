"""tunesmith.recipe: ``tunesmith run CONFIG``: the config schema, the run pipeline, its report, and the
environment check (``tunesmith check``)."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RunConfig": "tunesmith.recipe.config",
        "load_config": "tunesmith.recipe.config",
        "run": "tunesmith.recipe.pipeline",
        "RunResult": "tunesmith.recipe.pipeline",
        "write_report": "tunesmith.recipe.report",
        "check_environment": "tunesmith.recipe.environment",
    },
)
