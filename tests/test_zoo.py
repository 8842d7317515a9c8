"""Shipped pretrained models: found by name, described by a card, never written to."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lightm.engine import Segmenter
from napari_lightm.engine.checkpoint import CheckpointError
from napari_lightm.engine.zoo import (
    ZOO_DIR,
    find_pretrained,
    is_shipped,
    load_model,
    pretrained_models,
    resolve_model,
)


def tiny_xray() -> Segmenter:
    return Segmenter.new(2, ["background", "lung"], modality="XR", spacing=(1.4, 1.4),
                         device="cpu", init_filters=8, patch_size=(32, 32))


def test_a_folder_of_checkpoints_is_listed_by_name_and_cards_found(tmp_path):
    tiny_xray().save(tmp_path / "tiny-lungs.safetensors")
    (tmp_path / "tiny-lungs.md").write_text("# card")
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    models = pretrained_models(tmp_path)
    assert [m.name for m in models] == ["tiny-lungs"]  # the broken file is not offered
    m = models[0]
    assert m.class_names == ("background", "lung") and m.modality == "XR"
    assert m.spatial_dims == 2 and m.spacing == (1.4, 1.4) and m.card_text() == "# card"
    assert find_pretrained("TINY-lungs", tmp_path) == m
    assert resolve_model("tiny-lungs", tmp_path) == m.path


def test_paths_win_over_names_and_unknown_names_list_the_choices(tmp_path):
    tiny_xray().save(tmp_path / "a.safetensors")
    own = tmp_path / "a.safetensors"
    assert resolve_model(own, tmp_path) == own
    with pytest.raises(CheckpointError, match=r"pretrained: a;.*lightm models"):
        resolve_model("no-such-model", tmp_path)


def test_the_package_ships_the_chest_xray_model_with_its_card():
    model = find_pretrained("cxr-lungs")
    assert model is not None, f"cxr-lungs missing from {ZOO_DIR}"
    assert model.class_names == ("background", "right lung", "left lung", "heart")
    assert model.modality == "XR" and model.spacing == (1.4, 1.4)
    card = model.card_text()
    for fact in ("JSRT", "research and education only", "Limits", "Intended use",
                 "fold 1", "train_cxr.py"):
        assert fact in card
    assert is_shipped(model.path) and not is_shipped(ZOO_DIR.parent)
    seg = load_model("cxr-lungs", device="cpu")
    assert seg.preprocessing.field_of_view == (358.4, 358.4)
    weights = [p for p in seg.model.parameters()]
    assert all(np.isfinite(p.detach().numpy()).all() for p in weights)
