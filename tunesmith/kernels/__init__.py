"""Fused Triton kernels for LoRA/QLoRA training, each beside its pure-PyTorch reference.

One op per module: ``rms_norm``, ``rope``, ``swiglu``, ``fused_linear_cross_entropy``, ``lora_linear``
(LoRA fused into Q/K/V and O), ``lora_mlp`` (LoRA fused into the SwiGLU MLP) and ``nf4`` (bitsandbytes
NF4 dequantization). Triton is imported lazily: without it the references still run (CPU).
Import the op modules directly, e.g. ``from tunesmith.kernels.rms_norm import FastRMSNorm``.
"""

__all__ = ["OPS"]

OPS = ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy", "lora_linear", "lora_mlp", "nf4")
