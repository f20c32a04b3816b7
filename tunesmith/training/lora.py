"""Add LoRA adapters to a loaded model (Unsloth-compatible ``get_peft_model``), on 16-bit or 4-bit bases.

The adapters are ordinary PEFT ``LoraConfig`` adapters, so ``save_pretrained`` writes the standard
``adapter_config.json`` + ``adapter_model.safetensors`` that ``peft.PeftModel.from_pretrained`` loads.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

import torch

from tunesmith.errors import TunesmithError, closest_name
from tunesmith.models.expert_stacks import release_expert_stacks, stack_tensor_names
from tunesmith.models.quantization import keep_4bit_weights_unpacked
from tunesmith.models.registry import LLAMA_STYLE_TARGETS, family_of

__all__ = [
    "get_peft_model",
    "default_target_modules",
    "default_target_parameters",
    "keep_4bit_trainable",
    "enable_checkpointing",
    "family_has_fast_path",
    "CHECKPOINTING_MODES",
]

logger = logging.getLogger(__name__)

# "unsloth" names the best mode: on the GPU fast path, smart checkpointing that may also use pinned CPU
# memory (offloaded layer inputs and, for long sequences, attention results); on a CPU, smart checkpointing
# against the host's memory (a CPU is bound by arithmetic, and recompute adds a third to it); on a GPU
# without the fast path, ordinary checkpointing.
CHECKPOINTING_MODES = ("unsloth", True, False)


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """The LoRA target module names for ``model``'s family (all seven projections for Llama-style models)."""
    family = family_of(getattr(getattr(model, "config", None), "model_type", "") or "")
    wanted = family.lora_targets if family else LLAMA_STYLE_TARGETS
    present = _linear_leaf_names(model)
    found = [name for name in wanted if name in present]
    if not found:
        raise TunesmithError(
            f"tunesmith does not know which layers of this {type(model).__name__} to adapt, and none of the "
            f"usual projection names ({', '.join(wanted)}) exist in it. Pass target_modules=[...] with names "
            f"of its linear layers, for example {', '.join(sorted(present)[:6]) or '(none found)'}."
        )
    return found


def default_target_parameters(model: torch.nn.Module) -> list[str]:
    """The parameters (not layers) LoRA adapts for ``model``'s family: a mixture-of-experts model's experts,
    where the model has them; empty for every other family."""
    family = family_of(getattr(getattr(model, "config", None), "model_type", "") or "")
    names = {name for name, _ in model.named_parameters()}
    wanted = family.lora_parameters if family else ()
    return [p for p in wanted if any(name.endswith(p) for name in names)]


def _in_family_names(model: torch.nn.Module, target_modules: Iterable[str]) -> tuple[list[str], list[str]]:
    """``target_modules`` written for Llama, as ``model``'s layers and expert parameters (layers, parameters).

    A name the model has no layer of becomes the layer or expert parameter its family holds it in (the
    registry's ``llama_names``), as Unsloth users expect of the tutorial's seven names: on Phi-3, q_proj,
    k_proj and v_proj adapt the one qkv_proj; on a mixture-of-experts model, gate_proj, up_proj and down_proj
    adapt every expert. Names the family does not translate pass through for ``_check_targets`` to judge.
    """
    family = family_of(getattr(getattr(model, "config", None), "model_type", "") or "")
    if family is None or not family.llama_names:
        return list(target_modules), []
    names, present = dict(family.llama_names), _linear_leaf_names(model)
    layers: list[str] = []
    parameters: list[str] = []
    given: dict[str, list[str]] = {}  # the family's name -> the Llama names that asked for it
    for name in target_modules:
        own = names.get(name) if name not in present else None
        if own is None:
            layers.append(name)
            continue
        bucket = parameters if own in family.lora_parameters else layers
        if own not in given:
            bucket.append(own)
        given.setdefault(own, []).append(name)
    for own, asked in given.items():
        holds = sorted(llama for llama, o in names.items() if o == own)
        logger.info("target_modules %s: adapting %s, which holds %s in %s.", ", ".join(asked), own,
                    ", ".join(holds), family.display_name)  # fmt: skip
        if set(asked) != set(holds):
            logger.warning(
                "target_modules names %s but not %s: in %s they are one weight (%s), so LoRA adapts all "
                "of them.", ", ".join(asked), ", ".join(sorted(set(holds) - set(asked))),
                family.display_name, own,
            )  # fmt: skip
    return layers, parameters


def _linear_leaf_names(model: torch.nn.Module) -> set[str]:
    """Last name component of every linear layer (including bitsandbytes' 4-/8-bit linear layers)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}:
            names.add(name.rsplit(".", 1)[-1])
    return names


def _check_targets(model: torch.nn.Module, target_modules: Iterable[str]) -> list[str]:
    """Refuse target names that match no layer, with a did-you-mean hint."""
    present = _linear_leaf_names(model)
    targets = list(target_modules)
    for name in targets:
        if name not in present and not any(n.endswith(name) for n in present):
            hint = closest_name(name, present)
            raise TunesmithError(
                f"target_modules names '{name}', but the model has no linear layer of that name"
                + (f" (did you mean '{hint}'?)" if hint else "")
                + f". Its linear layers are: {', '.join(sorted(present))}."
            )
    return targets


def _is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_trainable(model: torch.nn.Module) -> None:
    """Keep bitsandbytes 4-bit weights in their trainable layout on CPU.

    On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for a faster inference kernel on the first
    no-grad pass and has no backward for that layout, so QLoRA gradients come out wrong. Turn that repacking
    off (the loader's switch) and undo any repacking that already happened, e.g. when the model answered a
    question before training or was loaded outside tunesmith.
    """
    keep_4bit_weights_unpacked(model)
    _hide_expert_stacks_from_ddp(model)
    packed = [
        m.weight
        for m in model.modules()
        if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
    ]
    if not packed:
        return
    # bitsandbytes has no public inverse of its CPU repacking; this is the function its own .cuda() uses.
    functional = importlib.import_module("bitsandbytes.functional")
    for weight in packed:
        weight.data, weight.quant_state = functional._convert_weight_packed_for_cpu_inverse(
            weight.data, weight.quant_state
        )


def _hide_expert_stacks_from_ddp(model: torch.nn.Module) -> None:
    """DDP syncs every parameter and buffer at its start, and buffers again at each forward: not the 4-bit
    expert stacks' placeholders (which cannot be written) and codes (the same on every rank)."""
    names = stack_tensor_names(model)
    if names:
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def enable_checkpointing(model: torch.nn.Module, mode) -> None:
    """Turn activation checkpointing on (``"unsloth"`` or True: non-reentrant) or off (False)."""
    if mode not in CHECKPOINTING_MODES:
        raise TunesmithError(
            f"use_gradient_checkpointing={mode!r} is not understood; "
            'use "unsloth" (the best mode), True or False.'
        )
    # transformers 5 renamed gradient checkpointing to activation checkpointing; older versions have the old
    # name.
    new_api = hasattr(model, "activation_checkpointing_enable")
    if mode is False:
        disable = getattr(
            model, "activation_checkpointing_disable" if new_api else "gradient_checkpointing_disable", None
        )
        if disable is not None:
            disable()
        return
    if new_api:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # LoRA leaves the embeddings frozen; checkpointed blocks still need an input that requires grad.
    model.enable_input_require_grads()


def get_peft_model(
    model: torch.nn.Module,
    r: int = 16,
    target_modules: Iterable[str] | str | None = None,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    bias: str = "none",
    use_gradient_checkpointing: bool | str = "unsloth",
    random_state: int = 3407,
    use_rslora: bool = False,
    loftq_config: dict | None = None,
    modules_to_save: list[str] | None = None,
    **kwargs,
):
    """Wrap ``model`` in LoRA adapters and return the ``peft.PeftModel`` (Unsloth's signature).

    ``target_modules=None`` takes the family's projections from ``tunesmith.models.registry`` (for a
    mixture-of-experts model also every expert, through PEFT's ``target_parameters``; the router stays
    frozen).
    ``use_gradient_checkpointing`` is ``"unsloth"`` (best mode), ``True`` or ``False``. A 4-/8-bit
    (bitsandbytes) base is prepared for k-bit training first (QLoRA). ``random_state`` seeds the adapter init.
    On CUDA, Llama-family and Qwen2 models get tunesmith's fused kernels and smart checkpointing
    (``fast_path=False`` keeps the plain path; ``max_memory_gb`` caps the memory it plans for; with
    ``"unsloth"`` checkpointing and a cap, the frozen input embedding also stays in CPU memory).
    Extra keyword arguments go to ``peft.LoraConfig`` (e.g. ``init_lora_weights``, ``layers_to_transform``).
    """
    import peft

    if isinstance(model, peft.PeftModel):
        logger.warning("The model already has LoRA adapters; returning it unchanged.")
        return model
    if r <= 0 or lora_alpha <= 0:
        raise TunesmithError(f"LoRA needs r > 0 and lora_alpha > 0 (got r={r}, lora_alpha={lora_alpha}).")
    if bias not in ("none", "all", "lora_only"):
        raise TunesmithError(f'bias={bias!r} is not understood; use "none", "all" or "lora_only".')
    if target_modules is None:
        targets = default_target_modules(model)
        if "target_parameters" not in kwargs:
            kwargs["target_parameters"] = default_target_parameters(model) or None
    elif isinstance(target_modules, str):  # "all-linear" or a regular expression: PEFT checks those itself
        targets = target_modules
    else:
        targets, parameters = _in_family_names(model, target_modules)
        targets = _check_targets(model, targets)
        if parameters and "target_parameters" not in kwargs:
            kwargs["target_parameters"] = parameters
    if kwargs.get("target_parameters") and lora_dropout:
        raise TunesmithError(
            f"lora_dropout={lora_dropout}: LoRA on the experts of this mixture-of-experts model "
            f"({', '.join(kwargs['target_parameters'])}) works without dropout only (PEFT cannot drop "
            "inputs inside the experts). Set lora_dropout=0, or adapt the attention layers alone with "
            'target_modules=["q_proj", "k_proj", "v_proj", "o_proj"] (gate_proj, up_proj and down_proj name '
            "the experts here)."
        )
    kwargs.pop("max_seq_length", None)  # Unsloth accepts (and ignores) it here
    use_fast_path = kwargs.pop("fast_path", True)
    max_memory_gb = kwargs.pop("max_memory_gb", None)
    kwargs.setdefault("task_type", "CAUSAL_LM")
    init = kwargs.pop("init_lora_weights", True)
    if loftq_config:
        init = "loftq"
        kwargs["loftq_config"] = (
            peft.LoftQConfig(**loftq_config) if isinstance(loftq_config, dict) else loftq_config
        )

    checkpointing = use_gradient_checkpointing if use_gradient_checkpointing in CHECKPOINTING_MODES else None
    if checkpointing is None:
        enable_checkpointing(model, use_gradient_checkpointing)  # raises the clear error
    on_cuda = next(model.parameters()).device.type == "cuda"
    use_fast_path = use_fast_path and on_cuda and family_has_fast_path(model)
    if _is_quantized(model) and not use_fast_path:
        if not on_cuda:
            keep_4bit_trainable(model)
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(checkpointing),
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        release_expert_stacks(model)  # its float32 cast made each 4-bit stack's placeholder a full tensor
    else:
        # The fast path keeps norms and embeddings in the compute dtype (no fp32 upcast of the k-bit recipe).
        enable_checkpointing(model, checkpointing)

    config = peft.LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        bias=bias,
        target_modules=targets,
        use_rslora=use_rslora,
        modules_to_save=modules_to_save,
        init_lora_weights=init,
        **kwargs,
    )
    torch.manual_seed(random_state)  # seeds every device, so the adapter init is reproducible on GPU too
    peft_model = peft.get_peft_model(model, config)
    if use_fast_path:
        from tunesmith.fast_path.patch import apply_fast_path

        # Smart checkpointing decides how many layers recompute; "unsloth" may also offload to CPU.
        apply_fast_path(
            peft_model, max_memory_gb=max_memory_gb, offload=use_gradient_checkpointing == "unsloth"
        )
    elif not on_cuda:
        from tunesmith.fast_path.patch import apply_cpu_path

        apply_cpu_path(
            peft_model, max_memory_gb=max_memory_gb, smart_checkpointing=checkpointing == "unsloth"
        )
    return peft_model


def family_has_fast_path(model: torch.nn.Module) -> bool:
    """Whether tunesmith's fused GPU kernels cover this model's architecture (the registry's row says)."""
    family = family_of(getattr(getattr(model, "config", None), "model_type", "") or "")
    return family is not None and family.fast_path
