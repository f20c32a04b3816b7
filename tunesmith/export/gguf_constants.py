"""What tunesmith's GGUF writer knows, as tables: quantization methods, architectures, pre-tokenizers.

Key strings, tensor names and quantization types come from ``gguf.constants``; this module only says which
of them tunesmith uses for what. Pre-tokenizer names are those llama.cpp's ``llama-vocab.cpp`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, LlamaFileType

from tunesmith.errors import TunesmithError, closest_name
from tunesmith.models.registry import FAMILIES, family_of

__all__ = [
    "DEFAULT_QUANT",
    "QuantMethod",
    "QUANT_METHODS",
    "quant_method",
    "ArchInfo",
    "arch_info",
    "PRE_TOKENIZERS",
    "GPT2_REGEX",
    "SPM_SPACE",
]


@dataclass(frozen=True)
class QuantMethod:
    """One ``quantization_method``: the file type it declares, how its weights are produced, and the top-1
    next-token agreement with PyTorch its file must reach in verification (``export/verify.py``)."""

    name: str  # what users pass, lower case
    file_type: LlamaFileType
    weight_type: GGMLQuantizationType | None  # 2-D weights in pure Python; None: llama.cpp quantizes
    top1_threshold: float
    intermediate: str | None = None  # for llama.cpp quantization: the pure-Python file it starts from

    @property
    def label(self) -> str:
        """The upper-case tag used in file names (``model.Q8_0.gguf``)."""
        return self.name.upper()

    @property
    def needs_llama_cpp(self) -> bool:
        """True for K-quants, which only llama.cpp's own quantizer makes."""
        return self.weight_type is None


QUANT_METHODS: dict[str, QuantMethod] = {
    m.name: m
    for m in (
        QuantMethod("f32", LlamaFileType.ALL_F32, GGMLQuantizationType.F32, 0.99),
        QuantMethod("f16", LlamaFileType.MOSTLY_F16, GGMLQuantizationType.F16, 0.99),
        QuantMethod("bf16", LlamaFileType.MOSTLY_BF16, GGMLQuantizationType.BF16, 0.99),
        QuantMethod("q8_0", LlamaFileType.MOSTLY_Q8_0, GGMLQuantizationType.Q8_0, 0.99),
        # 4-to-6-bit weights flip more near-ties (see export/verify.py)
        QuantMethod("q4_0", LlamaFileType.MOSTLY_Q4_0, GGMLQuantizationType.Q4_0, 0.90),
        QuantMethod("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, None, 0.90, intermediate="f16"),
        QuantMethod("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, None, 0.90, intermediate="f16"),
        QuantMethod("q6_k", LlamaFileType.MOSTLY_Q6_K, None, 0.90, intermediate="f16"),
    )
}
# What every export writes when no method is named: near-lossless (top-1 agreement >= 99%), half of f16.
DEFAULT_QUANT = "q8_0"
# Unsloth's spellings of the same methods.
_ALIASES = {
    "not_quantized": "f16",
    "fast_quantized": "q8_0",
    "quantized": "q4_k_m",
    "float16": "f16",
    "bfloat16": "bf16",
    "float32": "f32",
}


def quant_method(name: str) -> QuantMethod:
    """The method for a user-given name (case-insensitive), or an error listing the valid ones."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in QUANT_METHODS:
        return QUANT_METHODS[key]
    hint = closest_name(key, QUANT_METHODS)
    raise TunesmithError(
        f"Unknown quantization method {name!r}"
        + (f" (did you mean '{hint}'?)" if hint else "")
        + f". Valid methods: {', '.join(QUANT_METHODS)}. q8_0 is a good default; q4_k_m is smallest "
        "with good quality."
    )


@dataclass(frozen=True)
class ArchInfo:
    """How one transformers ``model_type`` is written as a llama.cpp architecture."""

    model_type: str
    arch: MODEL_ARCH
    permute_qk: bool  # llama.cpp's "llama" rope pairs adjacent dims; HF's pairs halves (needs a permutation)
    norm_weight_offset: float = 0.0  # added to every RMSNorm weight (the registry's Family row says why)

    @property
    def name(self) -> str:
        """The llama.cpp architecture name (``general.architecture``)."""
        return MODEL_ARCH_NAMES[self.arch]


def arch_info(model_type: str) -> ArchInfo:
    """The architecture row for ``model_type``, or an error naming the supported ones."""
    family = family_of(model_type or "")
    supported = sorted(t for t, f in FAMILIES.items() if f.gguf_arch)
    if family is None or not family.gguf_arch:
        raise TunesmithError(
            f"GGUF export does not support the architecture '{model_type}'. Supported model types: "
            f"{', '.join(supported)}. Save a merged folder instead (save_pretrained_merged) and convert it "
            "with a tool that knows this architecture."
        )
    arch = next(a for a, n in MODEL_ARCH_NAMES.items() if n == family.gguf_arch)
    return ArchInfo(
        model_type, arch, permute_qk=arch == MODEL_ARCH.LLAMA, norm_weight_offset=family.norm_weight_offset
    )


# -- pre-tokenizers ---------------------------------------------------------------------------------
# A tokenizer.json pre-tokenizer reduced to its splitting steps (regexes, in order) names the llama.cpp
# pre-tokenizer that splits text the same way.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_DEEPSEEK3_REGEX = (
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    (_LLAMA3_REGEX,): "llama-bpe",  # Llama 3 / 3.1 / 3.2, DeepSeek-R1-Distill-Llama
    (_QWEN2_REGEX,): "qwen2",  # Qwen2, Qwen2.5, Qwen3, DeepSeek-R1-Distill-Qwen
    (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3_REGEX): "deepseek-v3",
    (r"\p{N}", GPT2_REGEX): "smollm",  # SmolLM/SmolLM2: single digits, then GPT-2 splitting
    (GPT2_REGEX,): "gpt-2",
}
SPM_SPACE = "\u2581"  # SentencePiece's visible space
