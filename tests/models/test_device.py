"""Device and dtype choices: what None means on each device, and clear errors for the rest."""

from __future__ import annotations

import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.device import is_bfloat16_supported, resolve_device, resolve_dtype


def test_cpu_weights_default_to_fp32():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU case is covered in test_gpu_loading.py")
def test_default_device_without_a_gpu_is_the_cpu():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device({"": "cpu"}) == torch.device("cpu")
    assert is_bfloat16_supported() == is_bfloat16_supported("cpu")


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("torch.float32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_explicit_dtypes_are_honoured(name, dtype):
    assert resolve_dtype(name, "cpu") == dtype


@pytest.mark.parametrize("bad", ["int8", torch.int8, 16])
def test_unknown_dtype_is_named(bad):
    with pytest.raises(TunesmithError, match="not a weight dtype"):
        resolve_dtype(bad, "cpu")


def test_empty_device_map_dict_is_an_error():
    with pytest.raises(TunesmithError, match="empty dict"):
        resolve_device({})
