"""Sliding-window inference and Segmenter.predict: shapes, roi, slice mode, cancel, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lightm.engine import Cancelled, CancelToken, Segmenter
from napari_lightm.engine.callbacks import drain as _drain
from napari_lightm.engine.inference import iter_sliding_window, window_slices
from napari_lightm.io import Geometry


@pytest.fixture(scope="module")
def seg2d() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter.new(
        2,
        ["background", "a", "b"],
        modality="XR",
        init_filters=8,
        patch_size=(32, 32),
        device="cpu",
    )


@pytest.fixture(scope="module")
def seg3d() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter.new(
        3, ["background", "a"], modality="CT", init_filters=8, patch_size=(16, 16, 16), device="cpu"
    )


def test_single_tile_equals_a_plain_forward(seg2d):
    x = torch.randn(1, 1, 32, 32)
    logits = _drain(iter_sliding_window(seg2d.model, x, (32, 32), 3), None)
    with torch.no_grad():
        direct = seg2d.model(x)
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp32"])
def test_precision_is_a_no_op_on_the_cpu(seg2d, precision):
    """The CUDA precision choices leave CPU inference exactly as it is."""
    x = torch.randn(1, 1, 32, 32)
    logits = _drain(iter_sliding_window(seg2d.model, x, (32, 32), 3, precision=precision), None)
    with torch.no_grad():
        direct = seg2d.model(x)
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)
    assert not torch.is_autocast_enabled()


def test_unknown_precision_is_named_before_any_work(seg2d):
    calls = []
    seg2d.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="precision must be one of"):
            _drain(iter_sliding_window(seg2d.model, torch.randn(1, 1, 32, 32), (32, 32), 3,
                                       precision="fp16"), None)
    finally:
        seg2d.model._forward_pre_hooks.clear()
    assert calls == []


def test_windows_cover_the_image_with_overlap():
    slices = window_slices((40, 72), (32, 32), 0.5)
    covered = np.zeros((40, 72), int)
    for sl in slices:
        covered[sl] += 1
    assert covered.min() >= 1 and len(slices) == 2 * 4
    with pytest.raises(ValueError, match="overlap"):
        window_slices((40, 72), (32, 32), 1.0)


@pytest.mark.parametrize("shape", [(37, 50), (20, 20)])
def test_predict_2d_shapes_and_progress(seg2d, shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    seen = []
    labels = seg2d.predict(image, progress=seen.append)
    assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < 3
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total == len(seen) - 1
    probs = seg2d.predict_proba(image)
    assert probs.shape == (3, *shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), labels)


def test_2d_model_on_a_volume_goes_slice_by_slice(seg2d):
    vol = np.random.default_rng(1).random((3, 24, 40)).astype(np.float32)
    geometry = Geometry(spacing=(1.0, 1.0, 4.0))
    full = seg2d.predict(vol, geometry)
    assert full.shape == vol.shape
    # one slice through roi equals the same slice of the whole-volume result: slices are
    # independent, and the in-plane margin covers the whole (small) image
    one = seg2d.predict(vol, geometry, roi=(slice(1, 2),))
    assert one.shape == (1, 24, 40)
    np.testing.assert_array_equal(one[0], full[1])


def test_roi_returns_the_region_only(seg3d):
    vol = np.random.default_rng(2).normal(0, 300, (20, 24, 24)).astype(np.float32)
    roi = (slice(2, 10), slice(5, 17), slice(None))
    labels = seg3d.predict(vol, Geometry(spacing=(1.0, 1.0, 2.0)), roi=roi)
    assert labels.shape == (8, 12, 24)
    with pytest.raises(ValueError, match="empty"):
        seg3d.predict(vol, roi=(slice(5, 5),))
    with pytest.raises(ValueError, match="step 1"):
        seg3d.predict(vol, roi=(slice(0, 10, 2),))


def test_resampling_to_the_model_spacing_keeps_the_image_shape():
    seg = Segmenter.new(
        2,
        ["background", "a"],
        modality="MR",
        init_filters=8,
        patch_size=(16, 16),
        spacing=(2.0, 2.0),
        device="cpu",
    )
    image = np.random.default_rng(3).random((30, 44)).astype(np.float32)
    seen = []
    labels = seg.predict(image, Geometry(spacing=(1.0, 1.0)), progress=seen.append)
    assert labels.shape == (30, 44)
    assert seen[-1].total == len(window_slices((16, 24), (16, 16), 0.5))  # model grid: half size


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((8, 8)), "3D model cannot segment a 2D image"),
        (np.zeros((2, 8, 8, 8)), "2D or 3D"),
        (np.full((8, 8, 8), np.nan), "NaN"),
        ("not an array", "numpy array"),
    ],
)
def test_bad_images_are_clear_errors(seg3d, image, message):
    with pytest.raises(ValueError, match=message):
        seg3d.predict(image)


def test_geometry_must_match_the_image(seg3d):
    with pytest.raises(ValueError, match="geometry has 2 axes"):
        seg3d.check_compatible(np.zeros((8, 8, 8)), Geometry(spacing=(1.0, 1.0)))


def test_cancel_stops_within_one_tile(seg2d):
    image = np.random.default_rng(4).random((96, 96)).astype(np.float32)
    token = CancelToken()
    gen = seg2d.iter_predict(image, cancel=token)
    first = next(gen)
    second = next(gen)
    assert (first.done, second.done) == (0, 1) and second.total > 3
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)  # no further tile is computed


def test_tile_batch_halves_on_out_of_memory(seg2d, monkeypatch):
    model = seg2d.model
    batches = []

    class OOMOnBigBatches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            batches.append(x.shape[0])
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    x = torch.randn(1, 1, 64, 64)
    logits = _drain(iter_sliding_window(OOMOnBigBatches(), x, (32, 32), 3, tile_batch=4), None)
    reference = _drain(iter_sliding_window(model, x, (32, 32), 3, tile_batch=1), None)
    assert batches[:3] == [4, 2, 1] and set(batches[3:]) == {1}
    torch.testing.assert_close(logits, reference)


def test_mirroring_tta_runs_and_keeps_shapes(seg2d):
    image = np.random.default_rng(5).random((32, 32)).astype(np.float32)
    probs = seg2d.predict_proba(image, tta=True)
    assert probs.shape == (3, 32, 32)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


@pytest.mark.parametrize("modality", ["CT", "MR", "XR"])
def test_intensities_near_float32_max_give_finite_probabilities(modality):
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "a"], modality, init_filters=8, patch_size=(32, 32),
                        device="cpu")
    top = float(np.finfo(np.float32).max)
    image = np.random.default_rng(0).uniform(0.9 * top, top, (40, 40)).astype(np.float32)
    proba = seg.predict_proba(image)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(0), 1, atol=1e-5)


def test_one_extreme_voxel_acts_like_the_brightest_ordinary_one():
    """A 1e30 pixel in an X-ray is clipped by the normalisation: the labels equal those of
    the image with that pixel at the image's maximum, and differ from the untouched image's
    on under 1 % of the pixels (the model's own sensitivity to one bright pixel)."""
    from napari_lightm.io.phantoms import xray_phantom

    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "a", "b", "c"], "XR", init_filters=8,
                        patch_size=(64, 64), device="cpu")
    image, _, geometry = xray_phantom(seed=0, size=128)
    spiked, bright = image.copy(), image.copy()
    spiked[42, 64], bright[42, 64] = 1e30, image.max()
    plain = seg.predict(image, geometry)
    labels = seg.predict(spiked, geometry)
    assert np.array_equal(labels, seg.predict(bright, geometry))
    assert np.mean(labels != plain) < 0.01
