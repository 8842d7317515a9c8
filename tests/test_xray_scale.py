"""X-rays without a pixel spacing are scaled to the model's field of view, never 1 mm/pixel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lightm.engine import Segmenter
from napari_lightm.engine.preprocessing import Preprocessing, estimate_spacing
from napari_lightm.io import Geometry


def xray_model(fov=(358.4, 358.4)) -> Segmenter:
    import torch

    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "lung"], modality="XR", spacing=(1.4, 1.4),
                        device="cpu", init_filters=8, patch_size=(64, 64))
    seg.preprocessing.field_of_view = fov
    return seg


def test_the_shorter_side_spans_the_field_of_view():
    pre = Preprocessing(modality="XR", spacing=(1.4, 1.4), field_of_view=(358.4, 358.4))
    assert estimate_spacing((2048, 2048), pre) == pytest.approx((0.175, 0.175))
    assert estimate_spacing((256, 256), pre) == pytest.approx((1.4, 1.4))
    # a 14 x 17 inch portrait film: its 14 inch side matches the square training films
    assert estimate_spacing((2450, 2000), pre) == pytest.approx((0.1792, 0.1792))
    assert estimate_spacing((64, 64), Preprocessing(modality="XR")) is None


def test_pixel_units_are_estimated_and_said_a_known_spacing_is_kept():
    seg = xray_model()
    pixel = Geometry.identity(2, units="pixel", modality="XR")
    spacing, note = seg.input_spacing((1024, 1024), pixel)
    assert spacing == pytest.approx((0.35, 0.35)) and "estimated 0.35 mm" in note
    assert seg.input_spacing((1024, 1024), None)[0] == pytest.approx((0.35, 0.35))
    known = Geometry(spacing=(0.2, 0.3), modality="XR")
    assert seg.input_spacing((1024, 1024), known) == ((0.3, 0.2), None)


def test_models_without_a_field_of_view_take_images_as_they_are():
    ct = Segmenter.new(2, ["background", "liver"], device="cpu", init_filters=8,
                       patch_size=(64, 64))
    assert ct.input_spacing((8, 64, 64), None) == ((1.0, 1.0, 1.0), None)


def test_field_of_view_survives_save_and_load(tmp_path):
    seg = xray_model(fov=(300.0, 320.0))
    loaded = Segmenter.load(seg.save(tmp_path / "m.safetensors"), device="cpu")
    assert loaded.preprocessing.field_of_view == (300.0, 320.0)
    with pytest.raises(ValueError, match="field of view"):
        Preprocessing(modality="XR", field_of_view=(0.0, 10.0))


def test_same_film_at_two_resolutions_reaches_the_model_alike(monkeypatch):
    """A film and its 4x upsampled copy (both without spacing) give the network the same
    input; read as 1.4 mm pixels (the old "spacing 1" path) the copy would be 4x larger."""
    from scipy import ndimage

    import napari_lightm.engine.inference as inference

    seen = []
    real = inference.iter_sliding_window

    def spy(model, planes, *args, **kwargs):
        seen.append(planes.numpy().copy())
        return (yield from real(model, planes, *args, **kwargs))

    monkeypatch.setattr(inference, "iter_sliding_window", spy)
    rng = np.random.default_rng(0)
    small = ndimage.gaussian_filter(rng.normal(size=(64, 64)).astype(np.float32), 2.0)
    big = ndimage.zoom(small, 4, order=1, grid_mode=True, mode="nearest")
    seg = xray_model(fov=(64 * 1.4, 64 * 1.4))
    pixel = Geometry.identity(2, units="pixel", modality="XR")
    seg.predict(small, pixel)
    seg.predict(big, pixel)
    assert seen[0].shape == seen[1].shape == (1, 1, 64, 64)
    assert np.corrcoef(seen[0].ravel(), seen[1].ravel())[0, 1] > 0.97
    seg.predict(big, Geometry(spacing=(1.4, 1.4), modality="XR"))
    assert seen[2].shape == (1, 1, 256, 256)
