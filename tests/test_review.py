"""Reviewed slices and undoable model writes on a real napari Labels layer."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_lightm._napari._review import (
    REVIEWED_KEY,
    ReviewTracker,
    ShapeMismatchError,
    labels_dtype,
    reviewed_mask,
    reviewed_slices,
    touched_slices,
)


def _labels(shape):
    return Labels(
        np.zeros(shape, np.uint8),
        metadata={REVIEWED_KEY: np.zeros(shape[0] if len(shape) == 3 else 1, bool)},
    )


@pytest.mark.parametrize("shape", [(5, 8, 8), (8, 8)])
def test_model_write_is_one_undo_step_and_skips_reviewed(shape):
    layer = _labels(shape)
    tracker = ReviewTracker()
    tracker.track(layer)
    layer.data[(0,) * len(shape)] = 2
    reviewed_slices(layer)[0] = len(shape) == 3  # slice 0 reviewed (volumes only)
    before = np.array(layer.data)
    prediction = np.ones(shape, np.uint8)
    changed = tracker.write(layer, prediction)
    if len(shape) == 3:
        np.testing.assert_array_equal(layer.data[0], before[0])
        assert (layer.data[1:] == 1).all()
        assert changed == prediction[1:].size
    else:
        assert (layer.data == 1).all()
    # the model's write reviewed nothing new
    assert reviewed_slices(layer).sum() == (1 if len(shape) == 3 else 0)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_write_protect_can_be_lifted_and_masks_limit_it():
    layer = _labels((4, 6, 6))
    tracker = ReviewTracker()
    reviewed_slices(layer)[:] = True
    where = np.zeros((4, 6, 6), bool)
    where[2, 1:3, 1:3] = True
    assert tracker.write(layer, np.full((4, 6, 6), 3, np.uint8), where=where) == 0
    assert (
        tracker.write(layer, np.full((4, 6, 6), 3, np.uint8), where=where, protect_reviewed=False)
        == 4
    )
    with pytest.raises(ShapeMismatchError, match="prediction shape"):
        tracker.write(layer, np.zeros((2, 2, 2), np.uint8))


def test_user_paint_marks_the_touched_slices_reviewed():
    layer = _labels((6, 16, 16))
    tracker = ReviewTracker()
    tracker.track(layer)
    layer.brush_size = 3
    layer.paint((2, 8, 8), 1)  # a brush stroke on slice 2
    layer.data_setitem((np.array([4, 4]), np.array([1, 2]), np.array([1, 1])), 2)  # a script edit
    assert np.flatnonzero(reviewed_slices(layer)).tolist() == [2, 4]
    mask = reviewed_mask(layer)
    assert mask.shape == layer.data.shape and mask[2].all() and not mask[3].any()


def test_touched_slices_of_history_atoms():
    assert touched_slices(
        [((np.array([1, 3]), np.array([0, 0]), np.array([0, 0])), None, 1)], 3
    ) == {1, 3}
    assert touched_slices([], 2) == {0}


def test_labels_dtype():
    assert labels_dtype(3) == np.uint8 and labels_dtype(300) == np.uint16


@pytest.mark.gui
def test_ensure_labels_copies_the_image_placement(make_napari_viewer_proxy):
    from napari_lightm._napari._review import ensure_labels, find_labels

    viewer = make_napari_viewer_proxy(show=False)
    affine = np.array([[1, 0, 0, 0], [0, 0, -1, 5], [0, 1, 0, -2], [0, 0, 0, 1]], float)
    image = viewer.add_image(
        np.zeros((3, 10, 12), np.float32),
        name="img",
        scale=(2.5, 0.7, 0.7),
        translate=(1, 2, 3),
        affine=affine,
        metadata={"geometry": {"spacing": [0.7, 0.7, 2.5]}},
    )
    assert isinstance(image, Image)
    labels = ensure_labels(viewer, image, n_classes=3)
    assert find_labels(viewer, image) is labels or find_labels(viewer, image) == labels
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    assert labels.metadata["geometry"] == image.metadata["geometry"]
    assert labels.data.dtype == np.uint8 and labels.data.shape == (3, 10, 12)
    with pytest.raises(ShapeMismatchError):
        viewer.layers.remove(labels)
        ensure_labels(viewer, image, 3, data=np.zeros((2, 2), np.uint8))
