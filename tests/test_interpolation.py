"""Shape-based interpolation between reviewed slices (signed-distance interpolation)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lightm.engine.interpolation import (
    interpolate_labels,
    interpolate_shapes,
    reviewed_slices,
    signed_distance,
)


def slab(n: int = 11, size: int = 40) -> np.ndarray:
    """A slab whose half-width grows by one voxel per slice (linear boundary)."""
    x = np.arange(size)[None, None, :]
    half = (4 + np.arange(n))[:, None, None]
    return np.broadcast_to(np.abs(x - 20) < half, (n, 6, size)).astype(np.uint8)


def test_a_shape_linear_between_slices_is_reproduced_exactly():
    truth = slab()
    out = interpolate_labels(np.where(np.isin(np.arange(11), [0, 10])[:, None, None], truth, 0),
                             [0, 10])
    np.testing.assert_array_equal(out, truth)


def test_a_cone_between_two_discs_is_reproduced_up_to_rounding():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5)
    radii = np.linspace(6, 26, 9)
    truth = (r[None] < radii[:, None, None]).astype(np.uint8)
    out = interpolate_labels(truth, [0, 8], spacing=(3.0, 0.5, 0.5))
    for z in range(1, 8):  # right wherever the true circle is more than half a voxel away
        sure_in, sure_out = r < radii[z] - 0.5, r > radii[z] + 0.5
        assert out[z][sure_in].all() and not out[z][sure_out].any(), z


def test_labels_only_between_the_first_and_last_reviewed_slice():
    truth = slab()
    labels = np.where(np.isin(np.arange(11), [3, 6])[:, None, None], truth, 0)
    out = interpolate_labels(labels, [3, 6])
    assert not out[:3].any() and not out[7:].any()
    np.testing.assert_array_equal(out[3:7], truth[3:7])


def test_a_structure_that_ends_vanishes_half_way_to_the_empty_slice():
    yy, xx = np.mgrid[:32, :32]
    disc = (np.hypot(yy - 16, xx - 16) < 8).astype(np.uint8)
    labels = np.zeros((9, 32, 32), np.uint8)
    labels[0] = disc
    out = interpolate_labels(labels, [0, 8])
    areas = out.reshape(9, -1).sum(1)
    assert areas[0] == disc.sum() and areas[8] == 0
    assert all(a > b for a, b in zip(areas[:4], areas[1:4]))  # shrinking
    assert areas[3] > 0 and areas[4:].sum() == 0  # gone from half way on


def test_two_classes_keep_their_own_shapes():
    labels = np.zeros((5, 20, 40), np.uint8)
    labels[[0, 4], 5:15, 2:12] = 1
    labels[[0, 4], 5:15, 25:35] = 2
    out = interpolate_labels(labels, [0, 4])
    np.testing.assert_array_equal(out[2], labels[0])


def test_reviewed_slices_are_the_slices_that_are_all_truth():
    truth = np.zeros((5, 4, 4), bool)
    truth[[1, 3]] = True
    truth[2, 0, 0] = True  # a stroke, not a reviewed slice
    assert reviewed_slices(truth) == [1, 3]


def test_signed_distance_is_negative_inside_and_in_mm():
    mask = np.zeros((1, 21), bool)
    mask[0, :10] = True
    d = signed_distance(mask, (1.0, 2.0))
    assert d[0, 9] < 0 < d[0, 10]
    np.testing.assert_allclose(d[0, 12] - d[0, 11], 2.0)


def test_the_shape_and_gaps_between_slices():
    truth = slab()
    shapes = interpolate_shapes(truth, [2, 6, 8])
    assert (shapes.first, shapes.last, shapes.classes) == (2, 8, [1])
    np.testing.assert_array_equal(shapes.gap, [0, 1, 2, 1, 0, 1, 0])
    assert shapes.sdf.shape == (1, 7, *truth.shape[1:])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="3D"):
        interpolate_labels(np.zeros((4, 4), np.uint8), [0])
    with pytest.raises(ValueError, match="outside"):
        interpolate_labels(np.zeros((3, 4, 4), np.uint8), [0, 5])
