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
