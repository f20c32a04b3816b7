"""tunesmith.models: load a model (hub id, local folder, ``.gguf`` file, built-in alias), 4-bit, device and
dtype; the per-family facts (``registry``)."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "load": "tunesmith.models.loader",
        "materialize": "tunesmith.models.loader",
        "is_bfloat16_supported": "tunesmith.models.device",
        "FAMILIES": "tunesmith.models.registry",
        "family_of": "tunesmith.models.registry",
        "base_model_of": "tunesmith.models.unwrap",
    },
)
