"""A model's classes: add one without changing any prediction, rename, colour; all of it
saved with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lightm.engine import CheckpointError, Segmenter
from napari_lightm.engine.checkpoint import load_checkpoint, save_checkpoint
from napari_lightm.engine.classes import (
    add_class,
    as_hex_colour,
    rename_class,
    set_class_colour,
)
from napari_lightm.io.phantoms import ct_phantom


@pytest.fixture
def seg():
    torch.manual_seed(0)
    s = Segmenter.new(2, ["background", "liver"], "CT", init_filters=8, patch_size=(32, 32),
                      device="cpu")
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return s


def test_an_added_class_changes_no_prediction_until_trained(seg):
    image, _, geometry = ct_phantom(seed=0, shape=(8, 48, 48), spacing=(2.5, 2.0, 2.0))
    before = seg.predict(image, geometry, output="logits")
    labels_before = seg.predict(image, geometry)
    assert len(np.unique(labels_before)) == 2  # both old classes win somewhere
    assert add_class(seg, "kidney", "#00ff00") == 2
    after = seg.predict(image, geometry, output="logits")
    np.testing.assert_array_equal(after[:2], before)
    assert after[2].max() < before.min()  # the new class never wins
    np.testing.assert_array_equal(seg.predict(image, geometry), labels_before)
    assert seg.class_names == ["background", "liver", "kidney"]
    assert seg.model.config()["out_channels"] == 3
    # and it can be learnt: the new output has gradients like the others
    x = torch.randn(1, 1, 32, 32)
    seg.model.train()
    seg.model(x)[:, 2].mean().backward()
    assert seg.model.head[-1][-1].weight.grad[2].abs().sum() > 0


def test_names_and_colours_are_checked_and_saved(seg, tmp_path):
    with pytest.raises(ValueError, match="already called 'liver'"):
        add_class(seg, " LIVER ")
    with pytest.raises(ValueError, match="empty"):
        rename_class(seg, 1, "  ")
    with pytest.raises(ValueError, match="does not exist"):
        rename_class(seg, 0, "air")  # the background keeps its name
    with pytest.raises(ValueError, match="#rrggbb"):
        set_class_colour(seg, 1, "red")
    add_class(seg, "spleen")
    rename_class(seg, 1, "Liver (left lobe)")
    set_class_colour(seg, 2, (0.0, 0.5, 1.0))
    assert seg.class_colours == [None, None, "#0080ff"]
    path = seg.save(tmp_path / "m.safetensors")
    back = Segmenter.load(path, device="cpu")
    assert back.class_names == ["background", "Liver (left lobe)", "spleen"]
    assert back.class_colours == [None, None, "#0080ff"]
    for a, b in zip(seg.model.state_dict().values(), back.model.state_dict().values()):
        assert torch.equal(a, b)
    assert back.copy().class_colours == back.class_colours


def test_a_checkpoint_with_bad_colours_is_refused(seg, tmp_path):
    path = seg.save(tmp_path / "m.safetensors")
    state, meta, _ = load_checkpoint(path)
    meta["class_colours"] = ["#000000"]  # one colour for two classes
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, state, meta)
    with pytest.raises(CheckpointError, match="class_colours"):
        Segmenter.load(bad, device="cpu")


def test_colours_read_as_hex():
    assert as_hex_colour("#A0B1C2") == "#a0b1c2"
    assert as_hex_colour((1.0, 0.0, 0.5, 1.0)) == "#ff0080"
    assert as_hex_colour(None) is None
    with pytest.raises(ValueError):
        as_hex_colour((2.0, 0.0, 0.0))
