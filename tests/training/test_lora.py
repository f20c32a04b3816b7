"""get_peft_model: the family's targets, standard PEFT adapters, checkpointing modes, clear errors."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.registry import LLAMA_STYLE_TARGETS
from tunesmith.training import get_peft_model


def test_default_targets_are_the_familys_seven_projections(tiny):
    model, _ = tiny
    lora = get_peft_model(model, r=8)
    assert isinstance(lora, peft.PeftModel)
    assert len(LLAMA_STYLE_TARGETS) == 7
    assert set(lora.peft_config["default"].target_modules) == set(LLAMA_STYLE_TARGETS)
    adapted = {name.rsplit(".", 1)[-1] for name, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(LLAMA_STYLE_TARGETS)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_adapters_save_in_peft_format_and_peft_loads_them(tiny, tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = tiny
    lora = get_peft_model(model, r=8, lora_alpha=16, init_lora_weights=False)  # non-zero B: output changes
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
    lora.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        loaded = peft.PeftModel.from_pretrained(base, tmp_path)(input_ids=ids).logits
    assert torch.allclose(loaded, expected, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)


def test_random_state_makes_the_adapter_init_reproducible(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    def lora_a(seed):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), r=4, random_state=seed)
        return next(p for n, p in model.named_parameters() if "lora_A" in n).detach().clone()

    assert torch.equal(lora_a(3407), lora_a(3407))
    assert not torch.equal(lora_a(3407), lora_a(1))


@pytest.mark.parametrize(("mode", "expected"), [("unsloth", True), (True, True), (False, False)])
def test_checkpointing_modes(tiny, mode, expected):
    model, _ = tiny
    lora = get_peft_model(model, r=4, use_gradient_checkpointing=mode)
    assert lora.base_model.model.is_activation_checkpointing is expected


@pytest.mark.parametrize(("max_memory_gb", "recomputed"), [(None, 0), (1e-6, 2)])
def test_unsloth_checkpointing_on_a_cpu_recomputes_only_what_memory_requires(
    tiny, max_memory_gb, recomputed, caplog
):
    model, _ = tiny
    always = get_peft_model(copy.deepcopy(model), r=4, use_gradient_checkpointing=True).train()
    smart = get_peft_model(model, r=4, use_gradient_checkpointing="unsloth", max_memory_gb=max_memory_gb)
    smart.train()
    ids = torch.randint(0, 100, (2, 32))
    smart(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    layers = smart.base_model.model.model.layers
    assert sum(bool(layer.gradient_checkpointing) for layer in layers) == recomputed
    assert f"checkpointing plan: {recomputed} of 2 layers recompute" in caplog.text  # the user sees the plan
    # a cap below what training needs anyway is said once, with the way out, instead of a negative budget
    assert ("max_memory_gb=1e-06 leaves no room for activations" in caplog.text) is (
        max_memory_gb is not None
    )
    assert "Raise max_memory_gb to at least" in caplog.text or max_memory_gb is None
    assert "of the -" not in caplog.text  # no negative budget in the plan line
    always(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    expected = dict(always.named_parameters())
    for name, param in smart.named_parameters():  # the plan changes the memory, not the gradients
        if param.requires_grad:
            assert torch.allclose(param.grad, expected[name].grad, atol=1e-6), name


def test_bad_arguments_get_clear_errors(tiny):
    model, _ = tiny
    with pytest.raises(TunesmithError, match="did you mean 'q_proj'"):
        get_peft_model(model, target_modules=["q_prj", "v_proj"])
    with pytest.raises(TunesmithError, match="r > 0"):
        get_peft_model(model, r=0)
    with pytest.raises(TunesmithError, match="use_gradient_checkpointing='fast'"):
        get_peft_model(model, use_gradient_checkpointing="fast")


@pytest.mark.parametrize(
    ("family", "layers", "experts"),
    [
        ("phi3", {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}, set()),
        (
            "qwen3_moe",
            {"q_proj", "k_proj", "v_proj", "o_proj"},
            {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"},
        ),
    ],
)
def test_the_tutorials_seven_names_adapt_what_holds_them_in_fused_families(family, layers, experts):
    """A tutorial written for Llama passes q_proj ... down_proj: Phi-3 holds three of them in qkv_proj and two
    in gate_up_proj, a mixture of experts holds its MLP names in every expert; each is adapted, none left out."""
    from tests._models import tiny_model

    lora = get_peft_model(tiny_model(family), r=4, target_modules=list(LLAMA_STYLE_TARGETS))
    config = lora.peft_config["default"]
    assert set(config.target_modules) == layers
    assert set(config.target_parameters or ()) == experts
    adapted = {name.rsplit(".", 1)[-1] for name, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert layers <= adapted
    if experts:  # every expert's both weights carry an adapter, the router none
        trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
        assert any("experts" in n for n in trainable) and not any(".gate." in n for n in trainable)


def test_naming_part_of_a_fused_projection_adapts_all_of_it_and_says_so(caplog):
    from tests._models import tiny_model

    with caplog.at_level("WARNING", logger="tunesmith"):
        lora = get_peft_model(tiny_model("phi3"), r=4, target_modules=["q_proj", "v_proj"])
    assert set(lora.peft_config["default"].target_modules) == {"qkv_proj"}
    assert "but not k_proj" in caplog.text and "qkv_proj" in caplog.text
