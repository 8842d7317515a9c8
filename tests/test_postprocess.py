"""3D clean-up of predicted labels: connected components and holes."""

from __future__ import annotations

import numpy as np

from napari_lightm.engine.postprocess import fill_holes, keep_connected, largest_component


def blobs() -> np.ndarray:
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 2:10, 2:10] = 1  # the organ
    labels[2:4, 14:17, 14:17] = 1  # a stray blob in other voxels
    labels[0, 18:20, 0:2] = 1  # a small one
    return labels


def test_largest_component_keeps_only_the_biggest_piece():
    out = largest_component(blobs() == 1)
    assert out.sum() == 4 * 8 * 8 and out[2, 5, 5] and not out[2, 15, 15]


def test_components_touching_a_seed_are_kept_the_others_removed():
    labels = blobs()
    seeds = np.zeros_like(labels)
    seeds[2, 15, 15] = 1  # the person marked the smaller blob
    out = keep_connected(labels, seeds=seeds)
    assert out[2, 15, 15] == 1 and out[2, 5, 5] == 0 and out[0, 19, 0] == 0


def test_without_a_seed_the_largest_component_stays():
    out = keep_connected(blobs())
    assert out.sum() == 4 * 8 * 8


def test_components_connect_across_slices():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0, 2:4, 2:4] = 1
    labels[1, 4, 4] = 1  # diagonal neighbour of the block in slice 0
    labels[2, 5:8, 5:8] = 1
    seeds = np.zeros_like(labels)
    seeds[0, 2, 2] = 1
    np.testing.assert_array_equal(keep_connected(labels, seeds=seeds), labels)


def test_holes_are_filled_per_slice_but_not_over_another_class():
    labels = np.zeros((2, 12, 12), np.uint8)
    labels[:, 2:10, 2:10] = 1
    labels[:, 4:6, 4:6] = 0  # a hole
    labels[1, 7, 7] = 2  # another class inside
    out = fill_holes(labels, [1])
    assert (out[:, 4:6, 4:6] == 1).all() and out[1, 7, 7] == 2
    open_side = np.zeros((1, 12, 12), np.uint8)
    open_side[0, 2:10, 2:10] = 1
    open_side[0, 4:6, 4:12] = 0  # a notch open to the border: not a hole
    np.testing.assert_array_equal(fill_holes(open_side), open_side)
