"""Checkpoints: bit-exact round trip, atomic writes, clear errors for the wrong model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_lightm.engine import CheckpointError, Segmenter
from napari_lightm.engine.checkpoint import (
    CHECKPOINT_VERSION,
    FORMAT,
    META_KEY,
    atomic_write,
    load_checkpoint,
)


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
    assert path.suffix == ".safetensors"
    assert not path.with_suffix(".json").exists()  # one file is the truth: no sidecar
    back = Segmenter.load(tmp_path / target, device="cpu")
    a, b = seg.model.state_dict(), back.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (back.class_names, back.version, back.history) == (seg.class_names, 2, seg.history)
    assert back.preprocessing == seg.preprocessing and back.patch_size == seg.patch_size
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    np.testing.assert_array_equal(back.predict_proba(image), seg.predict_proba(image))
    meta = load_checkpoint(path)[1]
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


def rewrite_metadata(path, change) -> None:
    """Replace a checkpoint's header JSON by ``change(metadata)`` (tampering), weights kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[META_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(change(meta))})


def set_key(*keys, value):
    def change(meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
        return meta

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: [m], "JSON object was expected, got list"),
        (lambda m: None, "JSON object was expected, got NoneType"),
        (set_key("architecture", value=[1, 2]), "'architecture' must be an object"),
        (set_key("checkpoint_version", value="1"), "version '1' is not a positive integer"),
        (set_key("architecture", "init_filters", value=10**6), "init_filters must be"),
        (set_key("architecture", "init_filters", value=8.0), "init_filters must be"),
        (set_key("architecture", "blocks_down", value=[10**9, 2, 2, 4]), "blocks_down must be"),
        (set_key("architecture", "blocks_down", value=list(range(1, 20))), "blocks_down must be"),
        (set_key("architecture", "out_channels", value=10**9), "out_channels must be"),
        (set_key("patch_size", value=[10**5, 10**5]), "patch_size"),
        (set_key("patch_size", value=[2048, 2048, 2048]), "patch_size"),
        (set_key("patch_size", value=[0, 0]), "patch_size"),
        (set_key("patch_size", value=[-8, 32]), "patch_size"),
        (set_key("patch_size", value=None), "patch_size"),
        (set_key("spacing", value=[float("nan"), 1.0]), "spacing must be 2 numbers"),
        (set_key("preprocessing", "spacing", value=[0.0, 1.0]), "spacing must be 2 numbers"),
        (set_key("preprocessing", "spacing", value=[-1.5, 1.5]), "spacing must be 2 numbers"),
        (set_key("preprocessing", "spacing", value=[1e-9, 1e-9]), "spacing must be 2 numbers"),
        (set_key("class_names", value=["background", "lung", "heart"]), "3 class names"),
        (set_key("class_names", value=["background", "background"]), "1 distinct"),
        (set_key("class_names", value={"0": "background"}), "class_names must be a list"),
        (set_key("history", value="all of it"), "history"),
        (set_key("version", value=-1), "version must be"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_tampered_metadata_is_a_checkpoint_error(seg, tmp_path, change, message):
    """Every field is checked (type and range) before a model is built: absurd sizes
    never allocate, wrong types never give a traceback."""
    path = seg.save(tmp_path / "m.safetensors")
    rewrite_metadata(path, change)
    with pytest.raises(CheckpointError) as info:
        Segmenter.load(path, device="cpu")
    text = str(info.value)
    assert message in text and str(path) in text and len(text.splitlines()) == 1


def test_ct_statistics_in_metadata_are_checked(tmp_path):
    seg = Segmenter.new(2, ["background", "liver"], "CT", init_filters=8, patch_size=(32, 32),
                        device="cpu")
    path = seg.save(tmp_path / "ct.safetensors")
    rewrite_metadata(path, set_key("preprocessing", "std", value=[0.0]))
    with pytest.raises(CheckpointError, match="std > 0"):
        Segmenter.load(path, device="cpu")
    rewrite_metadata(path, set_key("preprocessing", "mean", value=["a lot"]))
    with pytest.raises(CheckpointError, match="finite numbers"):
        Segmenter.load(path, device="cpu")


def test_weights_that_do_not_fit_the_metadata_are_refused_before_building(seg, tmp_path,
                                                                          monkeypatch):
    """Metadata claiming a much wider model than the weights in the file is refused from
    the shapes alone: no model of the claimed size is ever built."""
    from napari_lightm.model import LightMUNet

    path = seg.save(tmp_path / "m.safetensors")
    rewrite_metadata(path, set_key("architecture", "init_filters", value=1024))
    built = []
    real_init = LightMUNet.__init__

    def spy(self, *args, **kwargs):
        built.append((kwargs.get("init_filters"), torch.empty(0).device.type))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(LightMUNet, "__init__", spy)
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        Segmenter.load(path, device="cpu")
    assert built == [(1024, "meta")]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(seg, tmp_path, bad):
    state = {k: v.clone() for k, v in seg.model.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].fill_(bad)
    from napari_lightm.engine.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "nan.safetensors", state, seg.metadata())
    with pytest.raises(CheckpointError, match=f"{name}.*NaN or infinite") as info:
        Segmenter.load(path, device="cpu")
    assert str(path) in str(info.value)


def test_a_newer_checkpoint_version_asks_for_an_update(seg, tmp_path):
    path = seg.save(tmp_path / "m.safetensors")
    rewrite_metadata(path, set_key("checkpoint_version", value=CHECKPOINT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer napari-lightm"):
        Segmenter.load(path, device="cpu")


def test_save_removes_the_old_sidecar_and_stale_temporaries(seg, tmp_path):
    """A killed save leaves ``.<name>.*.tmp``: loading ignores it, the next save of the
    same file removes it (and a metadata copy an older version wrote beside the file),
    and leaves other files alone."""
    target = tmp_path / "model.safetensors"
    stale = tmp_path / ".model.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other_tmp = tmp_path / ".last.safetensors.x.tmp"
    other_tmp.write_bytes(b"someone else's")
    (tmp_path / "model.json").write_text(json.dumps({"format": FORMAT, "version": 0}))
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint in folder"):
        Segmenter.load(tmp_path, device="cpu")  # the temporary is no checkpoint
    seg.save(tmp_path)
    assert Segmenter.load(tmp_path, device="cpu").version == seg.version
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".last.safetensors.x.tmp", "model.safetensors", "notes.json"]
    assert target.is_file()
