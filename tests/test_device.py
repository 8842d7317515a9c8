"""Device choice."""

from __future__ import annotations

import pytest
import torch

from napari_lightm.engine import pick_device


def test_cpu_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    expected = "cuda" if torch.cuda.is_available() else auto.type
    assert auto.type == expected and pick_device(None) == auto


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_missing_cuda_is_a_clear_error(name):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device(name)


@pytest.mark.parametrize("name", ["graphics", "tpu:0", "banana"])
def test_unknown_device_names(name):
    with pytest.raises(ValueError, match="device"):
        pick_device(name)
