"""Preprocessing: intensity schemes, dataset statistics, spacing, serialisation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lightm.engine.preprocessing import (
    DEFAULT_CT_WINDOW,
    Preprocessing,
    as_channels,
    normalize_modality,
    resample_shape,
    resample_to,
)


def test_new_ct_model_uses_fixed_hu_window():
    pre = Preprocessing.default("CT")
    assert pre.stats_from == "default"
    hu = np.array([[-3000.0, -1000.0, 0.0, 1000.0, 3000.0]], dtype=np.float32)
    out = pre.normalize(hu)
    # clipped to the window, then z-scored with fixed constants: symmetric, bounded
    assert out[0, 0] == out[0, 1] and out[0, 3] == out[0, 4]
    assert out[0, 2] == 0.0 and out[0, 3] == -out[0, 1] > 0
    assert (pre.clip_low[0], pre.clip_high[0]) == DEFAULT_CT_WINDOW


def test_ct_statistics_come_from_foreground_percentiles():
    rng = np.random.default_rng(0)
    image = rng.normal(-800, 50, (1, 40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.uint8)
    labels[10:30, 10:30] = 1
    image[0][labels == 1] = rng.normal(100, 20, 400)
    image[0, 20, 20] = 5000  # an outlier inside the foreground is clipped away
    pre = Preprocessing.default("CT").fit([image], [labels])
    assert pre.stats_from == "data"
    assert 40 < pre.clip_low[0] < 100 < pre.clip_high[0] < 200
    assert abs(pre.mean[0] - 100) < 10 and 10 < pre.std[0] < 30
    out = pre.normalize(image)
    assert out.dtype == np.float32
    assert out[0, 20, 20] == pytest.approx((pre.clip_high[0] - pre.mean[0]) / pre.std[0], rel=1e-5)


@pytest.mark.parametrize("modality", ["MR", "XR"])
def test_mr_and_xray_use_per_image_zscore(modality):
    pre = Preprocessing.default(modality)
    image = np.random.default_rng(1).uniform(0, 255, (1, 16, 16)).astype(np.float32)
    out = pre.normalize(image * 3 + 7)  # per-image z-score ignores affine intensity changes
    np.testing.assert_allclose(out, pre.normalize(image), atol=1e-5)
    assert abs(out.mean()) < 1e-5 and out.std() == pytest.approx(1, abs=1e-4)
    assert pre.fit([image], [np.ones((16, 16), np.uint8)]).to_dict() == pre.to_dict()


def test_round_trip_through_dict():
    pre = Preprocessing(modality="ct", in_channels=2, spacing=(2.5, 0.8, 0.8))
    pre = pre.fit(
        [np.random.default_rng(2).normal(0, 100, (2, 8, 8, 8))], [np.ones((8, 8, 8), np.uint8)]
    )
    back = Preprocessing.from_dict(pre.to_dict())
    assert back == pre and back.modality == "CT" and back.spacing == (2.5, 0.8, 0.8)


@pytest.mark.parametrize("bad", ["PET", "", "ultrasound"])
def test_unknown_modality_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="modality"):
        normalize_modality(bad)
    assert normalize_modality("mri") == "MR" and normalize_modality("DX") == "XR"


def test_channels_are_checked():
    assert as_channels(np.zeros((4, 5)), 1).shape == (1, 4, 5)
    assert as_channels(np.zeros((2, 4, 5)), 2).shape == (2, 4, 5)
    with pytest.raises(ValueError, match="2 input channels"):
        as_channels(np.zeros((3, 4, 5)), 2)


def test_resampling_to_model_spacing_and_back():
    image = np.random.default_rng(3).random((2, 10, 20)).astype(np.float32)  # leading channels
    down = resample_to(image, (1.0, 1.0), (2.0, 2.0), order=1)
    assert down.shape == (2, 5, 10)
    assert resample_to(image, (1.0, 1.0), None, order=1) is image
    labels = np.zeros((10, 20), np.uint8)
    labels[:, 10:] = 2
    back = resample_shape(resample_to(labels, (1.0, 1.0), (2.0, 2.0), order=0), (10, 20), order=0)
    assert back.shape == (10, 20) and set(np.unique(back)) <= {0, 2}  # nearest keeps label values


@pytest.mark.parametrize("modality", ["CT", "MR", "XR"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_intensities_near_the_float_limits_give_finite_input(modality, dtype):
    top = float(np.finfo(dtype).max)
    image = np.random.default_rng(4).uniform(0.8 * top, top, (1, 24, 24)).astype(dtype)
    image[0, :4] = -top
    out = Preprocessing.default(modality).normalize(image)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    if modality != "CT":  # still a z-score of the (clipped) image, not a constant
        assert abs(float(out.mean())) < 1e-3 and float(out.std()) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("modality", ["MR", "XR"])
def test_one_extreme_voxel_does_not_shift_the_zscore_of_the_others(modality):
    pre = Preprocessing.default(modality)
    image = np.random.default_rng(5).normal(500, 100, (1, 64, 64)).astype(np.float32)
    spiked = image.copy()
    spiked[0, 10, 10] = 1e30
    a, b = pre.normalize(image), pre.normalize(spiked)
    others = np.ones((64, 64), bool)
    others[10, 10] = False
    np.testing.assert_allclose(b[0][others], a[0][others], atol=0.02)
    assert b[0, 10, 10] == pytest.approx(float(a[0].max()), abs=0.1)  # clipped to the top


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (1e-9, 1.0),
                                     (1e9, 1.0)])
def test_unusable_model_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing must be between"):
        Preprocessing(modality="XR", spacing=spacing)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("std", [0.0], "std > 0"),
        ("mean", [float("nan")], "finite numbers"),
        ("clip_low", [5.0, 6.0], "needs 1 value"),
        ("clip_high", [-2000.0], "clip_low <= clip_high"),
    ],
)
def test_unusable_ct_statistics_are_refused(field, value, message):
    d = Preprocessing.default("CT").to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(d)


def test_resampling_that_would_explode_the_image_is_refused_before_allocating():
    image = np.zeros((512, 512), np.float32)
    with pytest.raises(ValueError, match="would make 2.62e\\+11 voxels; check the spacing"):
        resample_to(image, (1.0, 1.0), (0.001, 0.001), order=1)
    assert resample_to(image, (1.0, 1.0), (0.25, 0.25), order=1).shape == (2048, 2048)
