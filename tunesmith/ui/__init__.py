"""tunesmith.ui: ``tunesmith ui``, a local web app over the ``tunesmith run`` pipeline (Gradio, optional)."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "launch": "tunesmith.ui.server",
        "build_app": "tunesmith.ui.app",
        "Choices": "tunesmith.ui.runconfig",
        "build_config": "tunesmith.ui.runconfig",
    },
)
