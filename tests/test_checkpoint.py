"""Checkpoints: bit-exact round trip, atomic writes, clear errors for the wrong model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_lightm.engine import CheckpointError, Segmenter
from napari_lightm.engine.checkpoint import atomic_write


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    torch.manual_seed(1)
    s = Segmenter.new(
        2,
        ["background", "lung"],
        modality="XR",
        init_filters=8,
        patch_size=(32, 32),
        spacing=(1.5, 1.5),
        device="cpu",
    )
    s.history.append({"kind": "train", "steps": 3})
    s.version = 2
    return s


@pytest.mark.parametrize("target", ["dir", "file.safetensors"])
def test_round_trip_is_bit_exact(seg, tmp_path, target):
    path = seg.save(tmp_path / target)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    back = Segmenter.load(tmp_path / target, device="cpu")
    a, b = seg.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (back.class_names, back.version, back.history) == (seg.class_names, 2, seg.history)
    assert back.preprocessing == seg.preprocessing and back.patch_size == seg.patch_size
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(back.predict_proba(image), seg.predict_proba(image))
    meta = json.loads(path.with_suffix(".json").read_text())
    for key in (
        "architecture",
        "class_names",
        "preprocessing",
        "patch_size",
        "spacing",
        "history",
        "package_version",
        "checkpoint_version",
    ):
        assert key in meta
    assert meta["architecture"]["init_filters"] == 8
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "expect, message",
    [
        ({"spatial_dims": 3}, "2D model; a 3D model is needed"),
        ({"class_names": ["background", "liver"]}, "segments classes"),
        ({"in_channels": 3}, "input channel"),
    ],
)
def test_loading_for_other_data_names_the_difference(seg, tmp_path, expect, message):
    seg.save(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        Segmenter.load(tmp_path, device="cpu", **expect)


def test_corrupt_missing_and_foreign_files(seg, tmp_path):
    path = seg.save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt|unreadable"):
        Segmenter.load(path, device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        Segmenter.load(tmp_path / "nothing.safetensors", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in folder"):
        Segmenter.load(tmp_path / "empty", device="cpu")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a napari-lightm checkpoint"):
        Segmenter.load(tmp_path / "other.safetensors", device="cpu")
    assert isinstance(CheckpointError("x"), ValueError)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
