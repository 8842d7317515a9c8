"""The Qt-free annotation state: truth masks, undo steps, click discs, image links."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_lightm._napari.annotation import (
    IMAGE_ID_KEY,
    IMAGE_KEY,
    MARKED_KEY,
    REVIEWED_KEY,
    Annotation,
    ShapeMismatchError,
    TruthHistory,
    changed_voxels,
    click_disc,
    flat_indices,
    links_to,
)

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeLabels:
    """The parts of a napari Labels layer's history the state reads: LIFO undo/redo
    stacks of items (lists of ``(indices, old, new)`` atoms), as napari keeps them."""

    def __init__(self, shape, limit=100):
        from collections import deque

        self.data = np.zeros(shape, np.uint8)
        self.undo_stack = deque(maxlen=limit)
        self.redo_stack = deque(maxlen=limit)

    def paint(self, indices, value) -> list:
        indices = tuple(np.asarray(i) for i in indices)
        item = [(indices, self.data[indices].copy(), value)]
        self.data[indices] = value
        self.redo_stack.clear()
        self.undo_stack.append(item)
        return item

    def undo(self) -> None:
        item = self.undo_stack.pop()
        self.redo_stack.append(list(reversed(item)))  # napari re-lists the atoms reversed
        for indices, old, _new in reversed(item):
            self.data[indices] = old

    def redo(self) -> None:
        item = self.redo_stack.pop()
        self.undo_stack.append(list(reversed(item)))
        for indices, _old, new in reversed(item):
            self.data[indices] = new


def _state(shape):
    return Annotation({}, shape)


def test_module_imports_neither_qt_nor_napari():
    code = (
        "import sys, napari_lightm._napari.annotation as a; "
        "bad = [m for m in ('qtpy', 'napari', 'PyQt5', 'PyQt6', 'PySide6', 'torch') "
        "if m in sys.modules]; assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("shape", [(4, 6, 6), (6, 6)])
def test_truth_is_reviewed_slices_or_marked_voxels(shape):
    state = _state(shape)
    assert not state.has_truth() and state.marked() is None
    state.set_marked(np.array([np.ravel_multi_index((1,) * len(shape), shape)]))
    truth = state.truth()
    assert truth.sum() == 1 and truth[(1,) * len(shape)]
    assert state.set_reviewed([0]) and not state.set_reviewed([0])  # second time: no change
    truth = state.truth()
    if len(shape) == 3:
        assert truth[0].all() and truth.sum() == 36 + 1
    else:
        assert truth.all()  # the whole 2D image is its one reviewed unit
    region = (slice(1, 2), slice(0, 3), slice(0, 3)) if len(shape) == 3 else (slice(1, 3),) * 2
    np.testing.assert_array_equal(state.truth(region), truth[region])
    # un-reviewing keeps the painted voxel
    state.set_reviewed([0], False)
    assert state.truth().sum() == 1
    assert state.metadata[REVIEWED_KEY].dtype == bool and MARKED_KEY in state.metadata


def test_state_arrays_that_no_longer_fit_are_replaced():
    metadata = {REVIEWED_KEY: np.ones(3, bool), MARKED_KEY: np.ones((3, 4, 4), bool)}
    state = Annotation(metadata, (5, 4, 4))  # the labels were replaced by a taller array
    assert state.reviewed.shape == (5,) and not state.reviewed.any()
    assert state.marked() is None and MARKED_KEY not in metadata
    with pytest.raises(ShapeMismatchError, match="truth mask shape"):
        state.set_marked_mask(np.zeros((2, 2), bool))


def test_undo_and_redo_of_a_paint_take_back_and_restore_exactly_its_marks():
    layer = FakeLabels((3, 8, 8))
    state, history = _state(layer.data.shape), TruthHistory()

    def push(item, added=None):
        history.pushed(state, item, layer.undo_stack, layer.redo_stack, added=added)

    first = ((np.array([0, 0]), np.array([1, 2]), np.array([1, 1])),)
    push(layer.paint(first[0], 1))
    before = state.truth().copy()
    # a second stroke overlapping the first: only its new voxels belong to it
    second = (np.array([0, 0, 2]), np.array([2, 3, 5]), np.array([1, 1, 5]))
    push(layer.paint(second, 2))
    after = state.truth().copy()
    assert after.sum() == 4 and after[2, 5, 5]
    layer.undo()
    history.sync(state, layer.undo_stack, layer.redo_stack)
    np.testing.assert_array_equal(state.truth(), before)  # the overlap stays: it was marked
    layer.redo()
    history.sync(state, layer.undo_stack, layer.redo_stack)
    np.testing.assert_array_equal(state.truth(), after)
    layer.undo()
    layer.undo()
    history.sync(state, layer.undo_stack, layer.redo_stack)
    assert not state.truth().any()


def test_a_model_write_marks_nothing_and_an_undone_step_that_a_new_edit_discards_is_gone():
    layer = FakeLabels((2, 6, 6))
    state, history = _state(layer.data.shape), TruthHistory()
    stacks = (layer.undo_stack, layer.redo_stack)
    model = (np.array([0, 1]), np.array([0, 0]), np.array([0, 0]))
    history.pushed(state, layer.paint(model, 3), *stacks, added=np.zeros(0, np.intp))
    assert state.marked() is None  # the model's write is no truth
    painted = (np.array([1]), np.array([4]), np.array([4]))
    history.pushed(state, layer.paint(painted, 1), *stacks)
    layer.undo()  # no sync in between: the next push must still see the undo
    again = (np.array([1]), np.array([2]), np.array([2]))
    history.pushed(state, layer.paint(again, 1), *stacks)
    truth = state.truth()
    assert truth.sum() == 1 and truth[1, 2, 2] and not truth[1, 4, 4]
    assert len(history.steps) == 2  # the discarded step is dropped


def test_steps_that_fall_off_the_history_stay_applied():
    layer = FakeLabels((1, 4, 4), limit=2)
    state, history = _state(layer.data.shape), TruthHistory()
    stacks = (layer.undo_stack, layer.redo_stack)
    for x in range(3):
        index = (np.array([0]), np.array([0]), np.array([x]))
        history.pushed(state, layer.paint(index, 1), *stacks)
    assert state.truth()[0, 0, :3].all()
    layer.undo()
    layer.undo()  # napari keeps two steps: the first cannot be undone any more
    history.sync(state, *stacks)
    truth = state.truth()
    assert truth[0, 0, 0] and not truth[0, 0, 1:].any()
    assert len(history.steps) == 2


def test_a_reset_history_keeps_what_is_applied():
    from collections import deque

    layer = FakeLabels((1, 4, 4))
    state, history = _state(layer.data.shape), TruthHistory()
    index = (np.array([0]), np.array([1]), np.array([1]))
    history.pushed(state, layer.paint(index, 1), layer.undo_stack, layer.redo_stack)
    history.sync(state, deque(), deque())  # napari replaced its stacks (history reset)
    assert state.truth()[0, 1, 1] and not history.steps


def test_changed_voxels_of_masked_and_indexed_atoms():
    class Masked:  # napari's _MaskedPaintAtom: bounding box + changed voxels in it
        def __init__(self, slice_key, mask):
            self.slice_key, self.mask = slice_key, mask

    shape = (3, 5, 5)
    mask = np.zeros((1, 2, 2), bool)
    mask[0, 1, 0] = True
    item = [
        Masked((slice(1, 2), slice(2, 4), slice(3, 5)), mask),
        Masked((slice(2, 3), slice(0, 1), slice(0, 2)), None),  # every voxel changed
        ((np.array([0]), np.array([4]), np.array([4])), np.array([0]), 1),
    ]
    flat = changed_voxels(item, shape)
    got = set(zip(*np.unravel_index(flat, shape)))
    assert got == {(1, 3, 3), (2, 0, 0), (2, 0, 1), (0, 4, 4)}
    assert flat.dtype == np.uint32  # small arrays: compact undo deltas


def test_click_disc_lies_in_the_clicked_plane_and_is_clipped():
    disc = click_disc((4, 20, 20), (2, 10, 10))
    assert disc.shape == (4, 20, 20) and disc[2].sum() == 29 and not disc[[0, 1, 3]].any()
    assert disc[2, 10, 13] and not disc[2, 10, 14]  # radius 3
    region = (slice(2, 3), slice(0, 12), slice(8, 20))  # cuts the disc
    np.testing.assert_array_equal(click_disc((4, 20, 20), (2, 10, 10), region), disc[region])
    corner = click_disc((8, 8), (0, 0))
    assert corner.sum() == 11 and corner[0, 0]  # a quarter disc at the corner
    region = (slice(2, 3), slice(5, 16), slice(6, 15))  # holds the disc
    flat = flat_indices(click_disc((4, 20, 20), (2, 10, 10), region), region, (4, 20, 20))
    np.testing.assert_array_equal(np.sort(flat), np.flatnonzero(disc))


def test_labels_link_by_image_identity_then_by_name():
    meta = {IMAGE_ID_KEY: "a", IMAGE_KEY: "ct"}
    shape = (3, 4, 4)
    # renamed image, same identity
    assert links_to(meta, shape, "a", "ct renamed", shape, {"a"}) == "id"
    # another image that took the old name does not steal the labels
    assert links_to(meta, shape, "b", "ct", shape, {"a", "b"}) is None
    # the linked image was closed and the file reopened: adopted by name and shape
    assert links_to(meta, shape, "c", "ct", shape, {"c"}) == "name"
    assert links_to(meta, shape, "c", "ct", (3, 4, 5), {"c"}) is None
    # a layer from before identity links (name only)
    assert links_to({IMAGE_KEY: "ct"}, shape, "d", "ct", shape, {"d"}) == "name"
    assert links_to({}, shape, "d", "ct", shape, {"d"}) is None
