"""XRayAugmentation: image and labels move together, nothing is mirrored, outside is background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lightm.engine.augment import XRayAugmentation


def coded_batch(b: int = 6, n: int = 64):
    """Labels: 1 in the left third, 2 in the right third, 3 in a central block; the image
    encodes the label (10 * label + 5), so transformed pixels can be checked against it."""
    y = torch.zeros(b, n, n, dtype=torch.long)
    y[:, 8:56, 4:20] = 1
    y[:, 8:56, 44:60] = 2
    y[:, 26:38, 26:38] = 3
    x = (10.0 * y + 5.0)[:, None]
    return x, y


def only(**on) -> XRayAugmentation:
    """Every perturbation off except those named."""
    off = {k: 0.0 for k in ("p_spatial", "p_window", "p_gamma", "p_contrast", "p_blur",
                            "p_noise", "p_border", "p_marker")}
    return XRayAugmentation(**{**off, **on})


def test_spatial_moves_image_and_labels_together_and_keeps_sides():
    x, y = coded_batch()
    g = torch.Generator().manual_seed(0)
    xa, ya = only(p_spatial=1.0)(x, y, g)
    assert not torch.equal(ya, y)  # something moved
    for i in range(x.shape[0]):
        means = [float(xa[i, 0][ya[i] == k].mean()) for k in range(4) if (ya[i] == k).any()]
        assert means == sorted(means), "labels and image were transformed differently"
        cols = torch.arange(64.0)
        left = float((cols * (ya[i] == 1)).sum() / (ya[i] == 1).sum())
        right = float((cols * (ya[i] == 2)).sum() / (ya[i] == 2).sum())
        assert left < right, "right and left swapped: no mirroring allowed"


def test_outside_the_film_is_background():
    x, y = coded_batch()
    y[:] = 1  # the whole film is "lung": only pixels from outside can be background
    aug = only(p_spatial=1.0)
    aug.zoom_range = (0.7, 0.75)  # always zoom out: a border comes in
    xa, ya = aug(x, y, torch.Generator().manual_seed(1))
    assert (ya == 0).any() and set(ya.unique().tolist()) <= {0, 1}
    assert ya[:, 0, :].eq(0).all() and ya[:, :, -1].eq(0).all()


def test_intensity_perturbations_keep_labels_and_standardise():
    x, y = coded_batch()
    x = x + torch.randn_like(x)
    aug = only(p_window=1.0, p_gamma=1.0, p_contrast=1.0, p_blur=1.0, p_noise=1.0,
               p_border=1.0, p_marker=1.0)
    xa, ya = aug(x, y, torch.Generator().manual_seed(2))
    assert torch.equal(ya, y)
    assert torch.isfinite(xa).all()
    np.testing.assert_allclose(xa.mean(dim=(1, 2, 3)).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(xa.std(dim=(1, 2, 3)).numpy(), 1, atol=1e-3)


def test_same_generator_seed_same_batch():
    x, y = coded_batch()
    a = XRayAugmentation()(x, y, torch.Generator().manual_seed(3))
    b = XRayAugmentation()(x, y, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_refuses_3d_patches():
    with pytest.raises(ValueError, match="2D patches"):
        XRayAugmentation()(torch.zeros(1, 1, 4, 8, 8), torch.zeros(1, 4, 8, 8, dtype=torch.long),
                           torch.Generator())
