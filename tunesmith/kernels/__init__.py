"""tunesmith.kernels: fused Triton kernels for LoRA/QLoRA training, each beside its pure-PyTorch reference.

One op per module (``rms_norm``, ``rope``, ``swiglu``, ``geglu``, ``fused_linear_cross_entropy``,
``lora_linear``, ``lora_mlp``, ``nf4``), each in the same order: kernels, launchers, reference, autograd
Function, and one entry function that runs the kernel on CUDA and the reference elsewhere. The public names
are the op modules themselves. Triton is imported lazily.
"""

from tunesmith._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "rms_norm": "tunesmith.kernels.rms_norm",
        "rope": "tunesmith.kernels.rope",
        "swiglu": "tunesmith.kernels.swiglu",
        "geglu": "tunesmith.kernels.geglu",
        "fused_linear_cross_entropy": "tunesmith.kernels.fused_linear_cross_entropy",
        "lora_linear": "tunesmith.kernels.lora_linear",
        "lora_mlp": "tunesmith.kernels.lora_mlp",
        "nf4": "tunesmith.kernels.nf4",
    },
)
