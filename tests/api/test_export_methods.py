"""``attach_export_methods``: the export functions become methods of one model object, not of its class."""

from __future__ import annotations

import torch
from _models import tiny_model, with_lora

from tunesmith.api.export_methods import attach_export_methods


def test_methods_are_bound_to_the_instance_only(tmp_path):
    model = attach_export_methods(with_lora(tiny_model()))
    out = model.save_pretrained_merged(tmp_path / "m", None, "merged_16bit", dtype=torch.float32)
    assert (out / "model.safetensors").is_file()
    assert not hasattr(type(model), "save_pretrained_merged")
    assert not hasattr(tiny_model(), "save_pretrained_gguf")
