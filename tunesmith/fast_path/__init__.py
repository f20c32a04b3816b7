"""tunesmith.fast_path: the fused GPU training path for a loaded model, swapped in and out module by module
(``apply_fast_path`` / ``unpatch``), smart checkpointing, CPU offload and packing without padding."""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "apply_fast_path": "tunesmith.fast_path.patch",
        "unpatch": "tunesmith.fast_path.patch",
        "FastAttention": "tunesmith.fast_path.modules",
        "FastMLP": "tunesmith.fast_path.modules",
        "FastRMSNorm": "tunesmith.fast_path.modules",
        "FusedLMHead": "tunesmith.fast_path.modules",
        "plan_checkpointing": "tunesmith.fast_path.checkpointing",
        "pack_without_padding": "tunesmith.fast_path.packing",
    },
)
