"""Truth (reviewed slices, painted voxels, click discs) and undoable model writes on a
real napari Labels layer."""

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
)


def _labels(shape):
    return Labels(
        np.zeros(shape, np.uint8),
        metadata={REVIEWED_KEY: np.zeros(shape[0] if len(shape) == 3 else 1, bool)},
    )


@pytest.mark.parametrize("shape", [(5, 8, 8), (8, 8)])
def test_model_write_is_one_undo_step_and_skips_truth(shape):
    layer = _labels(shape)
    tracker = ReviewTracker()
    tracker.track(layer)
    painted = (1,) * len(shape)
    layer.data_setitem(tuple(np.array([i]) for i in painted), 2)  # the user's edit: truth
    reviewed_slices(layer)[0] = len(shape) == 3  # slice 0 reviewed (volumes only)
    before = np.array(layer.data)
    prediction = np.ones(shape, np.uint8)
    changed = tracker.write(layer, prediction)
    if len(shape) == 3:
        np.testing.assert_array_equal(layer.data[0], before[0])
        expected = np.ones(shape, np.uint8)
        expected[0] = before[0]
        expected[painted] = 2
        np.testing.assert_array_equal(layer.data, expected)
        assert changed == prediction[1:].size - 1
    else:
        assert layer.data[painted] == 2 and (layer.data == 1).sum() == layer.data.size - 1
    # the model's write made nothing truth
    truth = tracker.truth(layer)
    assert truth.sum() == (shape[1] * shape[2] + 1 if len(shape) == 3 else 1)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    assert tracker.truth(layer).sum() == truth.sum()  # undoing the model's write: same truth


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


def test_a_brush_stroke_makes_only_its_voxels_truth():
    layer = _labels((6, 16, 16))
    tracker = ReviewTracker()
    tracker.track(layer)
    layer.brush_size = 3
    layer.paint((2, 8, 8), 1)  # a brush stroke on slice 2
    stroke = layer.data == 1
    layer.data_setitem((np.array([4, 4]), np.array([1, 2]), np.array([1, 1])), 2)  # a script edit
    assert not reviewed_slices(layer).any()  # painting reviews no slice
    expected = stroke.copy()
    expected[4, 1:3, 1] = True
    np.testing.assert_array_equal(tracker.truth(layer), expected)
    tracker.mark(layer, [3])  # marking a slice reviewed makes all of it truth
    expected[3] = True
    np.testing.assert_array_equal(tracker.truth(layer), expected)
    mask = reviewed_mask(layer)
    assert mask.shape == layer.data.shape and mask[3].all() and not mask[2].any()


def test_undo_of_a_paint_takes_back_its_truth_and_redo_restores_it():
    layer = _labels((4, 16, 16))
    tracker = ReviewTracker()
    tracker.track(layer)
    layer.brush_size = 5
    layer.paint((1, 8, 8), 1)
    first = tracker.truth(layer).copy()
    layer.selected_label = 2
    layer.paint((1, 10, 10), 2)  # overlaps the first stroke
    both = tracker.truth(layer).copy()
    assert both.sum() > first.sum()
    layer.undo()
    np.testing.assert_array_equal(tracker.truth(layer), first)
    layer.undo()
    assert not tracker.truth(layer).any()
    layer.redo()
    np.testing.assert_array_equal(tracker.truth(layer), first)
    layer.redo()
    np.testing.assert_array_equal(tracker.truth(layer), both)
    # a new stroke after an undo discards the undone one and its truth
    layer.undo()
    layer.paint((3, 2, 2), 2)
    expected = first | (np.arange(4)[:, None, None] == 3) & (layer.data == 2)
    np.testing.assert_array_equal(tracker.truth(layer), expected)


def test_a_write_with_truth_marks_it_in_the_same_undo_step():
    layer = _labels((3, 10, 10))
    tracker = ReviewTracker()
    where = np.zeros((3, 10, 10), bool)
    where[1, 2:8, 2:8] = True  # the model's component
    disc = np.zeros_like(where)
    disc[1, 4:6, 7:10] = True  # the click's disc, partly outside the component
    changed = tracker.write(layer, np.full(where.shape, 2, np.uint8), where=where, truth=disc)
    assert changed == int((where | disc).sum())
    np.testing.assert_array_equal(tracker.truth(layer), disc)
    layer.undo()
    assert not layer.data.any() and not tracker.truth(layer).any()
    layer.redo()
    np.testing.assert_array_equal(tracker.truth(layer), disc)
    # a write that changes nothing still marks its disc (there is no step to undo)
    other = np.zeros_like(disc)
    other[1, 3, 3] = True
    assert tracker.write(layer, np.full(where.shape, 2, np.uint8), where=other, truth=other) == 0
    assert tracker.truth(layer)[1, 3, 3]


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


def _same(a, b) -> bool:
    """The same layer (the test viewer hands out proxies of the layers)."""
    return a is not None and b is not None and a.unique_id == b.unique_id


@pytest.mark.gui
def test_labels_stay_linked_through_renames_and_reorders(make_napari_viewer_proxy):
    from napari_lightm._napari._review import IMAGE_ID_KEY, IMAGE_KEY, ensure_labels, find_labels

    viewer = make_napari_viewer_proxy(show=False)
    image = viewer.add_image(np.zeros((3, 8, 8), np.float32), name="ct")
    labels = ensure_labels(viewer, image, n_classes=3)
    image.name = "ct renamed"
    labels.name = "my corrections"
    viewer.layers.move(viewer.layers.index(labels), 0)
    assert _same(find_labels(viewer, image), labels)
    assert labels.metadata[IMAGE_KEY] == "ct renamed"  # the name is kept current
    # a new image under the old name does not take the labels
    other = viewer.add_image(np.zeros((3, 8, 8), np.float32), name="ct")
    assert find_labels(viewer, other) is None
    # labels from before identity links (name only) are adopted by name and shape
    old = viewer.add_labels(np.zeros((3, 8, 8), np.uint8), metadata={IMAGE_KEY: "ct"})
    assert _same(find_labels(viewer, other), old)
    assert old.metadata[IMAGE_ID_KEY] == str(other.unique_id)
    # the linked image closed and its file reopened: its labels are found again
    viewer.layers.remove(image)
    reopened = viewer.add_image(np.zeros((3, 8, 8), np.float32), name="ct renamed")
    assert _same(find_labels(viewer, reopened), labels)


def test_a_restored_truth_mask_replaces_the_marks_and_outlives_undo():
    layer = _labels((3, 8, 8))
    tracker = ReviewTracker()
    tracker.track(layer)
    layer.data_setitem((np.array([0]), np.array([1]), np.array([1])), 1)
    saved = np.zeros((3, 8, 8), bool)
    saved[2, 3:5, 3:5] = True
    tracker.set_marked_mask(layer, saved)  # what a session reopens
    np.testing.assert_array_equal(tracker.truth(layer), saved)
    layer.undo()  # an edit from before the restore: its data goes, the restored truth stays
    np.testing.assert_array_equal(tracker.truth(layer), saved)
    with pytest.raises(ShapeMismatchError):
        tracker.set_marked_mask(layer, np.zeros((3, 8), bool))


def test_a_model_write_keeps_a_compact_undo_step():
    from napari_lightm._napari._review import _stacks

    shape = (40, 300, 300)  # 3.6 M voxels
    layer = _labels(shape)
    tracker = ReviewTracker()
    tracker.track(layer)
    prediction = np.zeros(shape, np.uint8)
    prediction[2:38, 20:280, 20:280] = 1
    prediction[10:20, 100:200, 100:200] = 2
    changed = tracker.write(layer, prediction)
    assert changed == (prediction > 0).sum()
    undo, _ = _stacks(layer)
    stored = sum(
        sum(np.asarray(i).nbytes for i in atom[0]) + np.asarray(atom[1]).nbytes
        + np.asarray(atom[2]).nbytes
        for atom in undo[-1]
    )
    # 3 uint16 indices + the old and new uint8 values; int64 indices would be 26 bytes
    assert stored <= 8 * changed
    layer.undo()
    assert not layer.data.any()
    layer.redo()
    np.testing.assert_array_equal(layer.data, prediction)
