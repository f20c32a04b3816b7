"""tunesmith.api: the facade the reference tutorial's readers know, ``FastLanguageModel``, and the export
methods it binds to each model it returns (``model.save_pretrained_gguf``,
``model.save_pretrained_merged``)."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FastLanguageModel": "tunesmith.api.fast_language_model",
        "attach_export_methods": "tunesmith.api.export_methods",
    },
)
