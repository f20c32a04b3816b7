"""``save_pretrained_gguf``: a fine-tuned model (LoRA merged on the fly) as one GGUF file, plus an Ollama
Modelfile beside it, optionally verified against llama.cpp.

Everything that can be wrong with the request is checked before the first byte is written; the file
is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tunesmith._atomic import atomic_path, scratch_dir
from tunesmith.errors import TunesmithError
from tunesmith.export._output import (
    check_file_stem,
    check_free_space,
    check_output_dir,
    disk_full_as_error,
)
from tunesmith.export.gguf_constants import DEFAULT_QUANT, QUANT_METHODS, QuantMethod, arch_info, quant_method
from tunesmith.export.gguf_hparams import check_llama_cpp_assumptions
from tunesmith.export.gguf_names import gguf_tensors
from tunesmith.export.gguf_tokenizer import tokenizer_metadata
from tunesmith.export.gguf_writer import estimate_bytes, write_gguf
from tunesmith.export.llama_cpp import quantize_in_llama_cpp, require_llama_cpp
from tunesmith.export.merge import merged_tensors
from tunesmith.export.ollama import DEFAULT_NUM_CTX
from tunesmith.models.unwrap import base_model_of

__all__ = ["save_pretrained_gguf", "gguf_file_name"]

logger = logging.getLogger(__name__)


def gguf_file_name(name: str, method: QuantMethod) -> str:
    """``<name>.<QUANT>.gguf``, the file name llama.cpp users expect."""
    return f"{name}.{method.label}.gguf"


def _embedding_rows(model) -> int:
    return int(base_model_of(model).get_input_embeddings().weight.shape[0])


def _default_num_ctx(model, config) -> int:
    """The training sequence length when known (``model.max_seq_length``), else the model's context capped
    at 4096 (Ollama reserves the whole KV cache up front)."""
    context = int(config.max_position_embeddings)
    trained = getattr(base_model_of(model), "max_seq_length", None)
    return (
        min(int(trained), context)
        if isinstance(trained, int) and trained > 0
        else min(context, DEFAULT_NUM_CTX)
    )


def _write_file(target: Path, method: QuantMethod, **write_args) -> None:
    """Write ``target`` atomically; K-quants go through a 16-bit file that is removed afterwards."""
    if not method.needs_llama_cpp:
        with atomic_path(target) as tmp:
            write_gguf(tmp, method=method, **write_args)
        return
    intermediate = QUANT_METHODS[method.intermediate or "f16"]
    with scratch_dir(target) as scratch:
        source = scratch / gguf_file_name("intermediate", intermediate)
        write_gguf(source, method=intermediate, **write_args)
        with atomic_path(target) as tmp:
            quantize_in_llama_cpp(source, tmp, int(method.file_type), method.label)


def save_pretrained_gguf(
    model,
    save_directory: str | os.PathLike,
    tokenizer=None,
    quantization_method: str = DEFAULT_QUANT,
    *,
    name: str | None = None,
    modelfile: bool | None = None,
    prompt_template=None,
    num_ctx: int | None = None,
    overwrite: bool = False,
    verify: bool = False,
) -> Path:
    """Write ``save_directory/<name>.<QUANT>.gguf`` (and an Ollama ``Modelfile``); return the GGUF path.

    ``quantization_method``: f32, f16, bf16, q8_0 (default), q4_0 (pure Python) or q4_k_m, q5_k_m, q6_k
    (llama.cpp's quantizer, needs ``pip install "tunesmith[verify]"``). LoRA adapters are merged tensor by
    tensor; 4-bit bases are dequantized. ``name`` defaults to the folder name. ``modelfile``: True
    requires one (error when no prompt format is known), None writes one when the tokenizer has a chat
    template or ``prompt_template`` is given, False never. ``num_ctx`` defaults to the training sequence
    length (``model.max_seq_length``), else the model's context capped at 4096; a later export into the same
    folder points the Modelfile at its own file. ``verify=True`` runs
    :func:`tunesmith.export.verify.verify_gguf` and raises if it fails.
    """
    from tunesmith.export.ollama import plan_modelfile, write_modelfile

    method = quant_method(quantization_method)
    if num_ctx is not None and (isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1):
        raise TunesmithError(
            f"num_ctx={num_ctx!r} is not a context length: give a whole number of tokens of at least 1 "
            "(e.g. num_ctx=4096), or leave it out for min(context, 4096)."
        )
    config = base_model_of(model).config
    arch = arch_info(getattr(config, "model_type", ""))
    check_llama_cpp_assumptions(config, arch)
    folder = check_output_dir(save_directory, overwrite)
    stem = check_file_stem(name if name is not None else (folder.resolve().name or "model"))
    if tokenizer is None:
        raise TunesmithError(
            "save_pretrained_gguf needs the tokenizer the model was trained with: "
            "model.save_pretrained_gguf(folder, tokenizer)."
        )
    if method.needs_llama_cpp:
        require_llama_cpp(f"Quantization method '{method.name}' (or choose f16, bf16, q8_0 or q4_0)")
    meta = tokenizer_metadata(tokenizer, _embedding_rows(model))
    modelfile_plan = (
        plan_modelfile(tokenizer, prompt_template, required=modelfile) if modelfile is not False else None
    )
    tensors = gguf_tensors(merged_tensors(model), arch, config)
    target = folder / gguf_file_name(stem, method)
    needed = estimate_bytes(tensors, method, meta) * (2 if method.needs_llama_cpp else 1)
    check_free_space(folder, needed)
    folder.mkdir(parents=True, exist_ok=True)
    with disk_full_as_error(target):
        _write_file(
            target, method, arch=arch, config=config, tensors=tensors, tokenizer_meta=meta, model_name=stem
        )
        if modelfile_plan is not None:
            write_modelfile(
                folder,
                target,
                modelfile_plan,
                num_ctx=num_ctx or _default_num_ctx(model, config),
            )
    logger.info("wrote %s", target)
    if verify:
        from tunesmith.export.verify import verify_gguf

        report = verify_gguf(target, (model, tokenizer))
        print(report.summary())
        if not report.passed:
            raise TunesmithError(
                f"The GGUF file {target} failed verification against the PyTorch model:\n{report.summary()}"
            )
    return target
