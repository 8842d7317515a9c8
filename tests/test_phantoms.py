"""Phantoms: deterministic, every class present, plausible intensities, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

from napari_lightm.io.phantoms import CT_CLASSES, XRAY_CLASSES, ct_phantom, xray_phantom

SMALL = {
    "xray": lambda seed: xray_phantom(seed, size=96),
    "ct": lambda seed: ct_phantom(seed, shape=(16, 48, 48)),
}
CLASSES = {"xray": XRAY_CLASSES, "ct": CT_CLASSES}


@pytest.mark.parametrize("kind", SMALL)
def test_same_seed_same_phantom_other_seed_other(kind):
    image, labels, geometry = SMALL[kind](3)
    image2, labels2, geometry2 = SMALL[kind](3)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)
    assert geometry == geometry2
    other, other_labels, _ = SMALL[kind](4)
    assert not np.array_equal(image, other)
    assert not np.array_equal(labels, other_labels)


@pytest.mark.parametrize("kind", SMALL)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_class_present(kind, seed):
    image, labels, geometry = SMALL[kind](seed)
    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert image.shape == labels.shape and image.ndim == geometry.ndim
    assert set(np.unique(labels)) == set(range(len(CLASSES[kind])))
    assert np.isfinite(image).all()


def test_xray_default_size_orientation_and_range():
    image, labels, geometry = xray_phantom()
    assert image.shape == (512, 512)
    assert 0 <= image.min() and image.max() <= 1
    columns = {c: np.nonzero(labels == c)[1].mean() for c in (1, 2)}
    assert columns[1] < 256 < columns[2]  # right lung on the image's left
    lung, heart = (image[labels == c].mean() for c in (1, 3))
    assert lung < heart  # air-filled lungs dark, heart bright
    assert geometry.modality == "XR" and geometry.spacing == pytest.approx((360 / 512,) * 2)


def test_ct_default_hu_anatomy_and_geometry():
    image, labels, geometry = ct_phantom()
    assert image.shape == (48, 160, 160)
    assert geometry.scale == (2.5, 0.8, 0.8)
    assert (geometry.modality, geometry.intensity_unit) == ("CT", "HU")
    assert np.median(image[0, :3, :3]) == pytest.approx(-1000, abs=40)  # air in the corner
    assert 80 < np.median(image[labels == 1]) < 140  # enhanced liver
    assert np.median(image[labels == 2]) > 200  # bone
    assert ndimage.label(labels == 1)[1] == 1  # the liver is one piece
    assert np.nonzero(labels == 1)[2].mean() < 80  # on the patient's right = image left


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ct_liver_is_one_piece_and_learnable(seed):
    """A smoothed HU window already finds most of the liver: a tiny model can learn it."""
    image, labels, _ = ct_phantom(seed, shape=(16, 48, 48))
    liver = labels == 1
    assert ndimage.label(liver)[1] == 1
    guess = ndimage.median_filter(image, 3)
    guess = (guess > 80) & (guess < 150)
    dice = 2 * (guess & liver).sum() / (guess.sum() + liver.sum())
    assert dice > 0.7


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda: xray_phantom(size=8), "size >= 32"), (lambda: ct_phantom(shape=(4, 32, 32)), ">= 8")],
)
def test_too_small_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("make", [xray_phantom, ct_phantom], ids=["xray", "ct"])
def test_default_size_is_fast(make):
    make(0)  # warm imports
    start = time.perf_counter()
    make(1)
    # < 1 s on a free laptop core; generous bound because CI machines are shared
    assert time.perf_counter() - start < 3.0


def test_xray_reads_like_a_film():
    """Dark air beside the neck, lungs darker than the mediastinum and the abdomen below
    the diaphragm, the heart over the left lung's medial border."""
    image, labels, _ = xray_phantom(seed=0, size=128)
    lungs = image[np.isin(labels, (1, 2))].mean()
    assert image[:8, :8].mean() < 0.5 * lungs  # air outside the body, top corner
    assert image[-16:, 48:80].mean() > lungs + 0.2  # abdomen under the domes
    assert image[16:40, 60:68].mean() > lungs + 0.2  # mediastinum between the lungs
    heart_cols = np.nonzero(labels == 3)[1]
    left_cols = np.nonzero(labels == 2)[1]
    assert heart_cols.min() < 64 < heart_cols.max() < left_cols.max()
    # the heart reaches into the left lung's field: some rows hold both, heart medially
    rows = [r for r in range(128) if (labels[r] == 2).any() and (labels[r] == 3).any()]
    assert rows and all(
        np.nonzero(labels[r] == 3)[0].max() < np.nonzero(labels[r] == 2)[0].max() for r in rows
    )


@pytest.mark.slow
def test_the_shipped_chest_model_segments_the_xray_sample():
    """The sample film is close enough to real PA films for ``cxr-lungs``: Dice >= 0.9 for
    each class (right lung, left lung, heart) on the napari sample (seed 0, 512 px)."""
    from napari_lightm.engine.metrics import dice_iou
    from napari_lightm.engine.zoo import load_model

    image, labels, geometry = xray_phantom(seed=0)
    prediction = load_model("cxr-lungs", device="cpu").predict(image, geometry)
    dice = [dice_iou(prediction, labels, k)[0] for k in (1, 2, 3)]
    print("Dice right lung, left lung, heart:", [round(d, 3) for d in dice])
    assert min(dice) >= 0.9, dice
