"""The widget's truth in a real viewer: what fine-tuning learns from, what model writes
may change, undo/redo, image <-> labels links, and closing the viewer mid-job.

Predictions are a constant stand-in for the model (``iter_predict`` patched), so each
test knows exactly which voxels a model write would change.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SHAPE = (8, 48, 48)
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def seg2d():
    """A tiny 2D model, built before any viewer (the model's imports must come first)."""
    import torch

    from napari_lightm.engine import Segmenter
    from napari_lightm.io.phantoms import CT_CLASSES

    torch.manual_seed(0)
    return Segmenter.new(
        2, list(CT_CLASSES), modality="CT", device="cpu", init_filters=8, patch_size=(48, 48)
    )


@pytest.fixture
def setup(seg2d, make_napari_viewer_proxy, tmp_path, monkeypatch):
    """(viewer, widget, image layer as the widget sees it) with a small CT phantom."""
    from conftest import ct_widget

    return ct_widget(make_napari_viewer_proxy, seg2d, SHAPE, tmp_path, monkeypatch)


def predict_constant(monkeypatch, seg, value: int) -> None:
    """Make ``seg`` predict ``value`` everywhere (through the worker, as the model does):
    its labels (Segment) and its logits (Segment unreviewed, the recipe's path)."""
    from napari_lightm.engine.callbacks import Progress

    def region_shape(image, roi):
        region = roi or tuple(slice(0, n) for n in image.shape)
        return tuple(len(range(*s.indices(n))) for s, n in zip(region, image.shape))

    def iter_predict(image, geometry=None, *, roi=None, cancel=None, **_kwargs):
        yield Progress(0, 1, "predict")
        return np.full(region_shape(image, roi), value, np.uint8)

    def iter_logits(image, geometry=None, *, roi=None, cancel=None, **_kwargs):
        yield Progress(0, 1, "predict")
        logits = np.zeros((seg.n_classes, *region_shape(image, roi)), np.float32)
        logits[value] = 10.0
        return logits

    monkeypatch.setattr(seg, "iter_predict", iter_predict)
    monkeypatch.setattr(seg, "iter_logits", iter_logits)


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def go_to(viewer, layer, z: int) -> None:
    viewer.dims.set_point(0, layer.data_to_world([z, 0, 0])[0])


def disc(index, radius: int = 3) -> np.ndarray:
    """The voxels a click at ``index`` makes truth: a disc in the clicked slice."""
    z, y, x = index
    zz, yy, xx = np.indices(SHAPE)
    return (zz == z) & ((yy - y) ** 2 + (xx - x) ** 2 <= radius**2)


def samples_truth(widget) -> tuple[np.ndarray, np.ndarray]:
    """(reviewed mask, labels) of the one fine-tuning sample the widget gathers."""
    from napari_lightm._napari._finetune_panel import gather_samples

    samples, _ = gather_samples(widget)
    assert len(samples) == 1
    return samples[0].reviewed, samples[0].labels


# --- what fine-tuning learns from -------------------------------------------------------
def test_a_brush_stroke_is_truth_only_where_painted_a_reviewed_slice_everywhere(setup):
    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    labels.brush_size = 5
    labels.paint((2, 20, 20), 1)  # one brush stroke on slice 2, over model-free labels
    stroke = labels.data == 1
    assert 0 < stroke.sum() < SHAPE[1] * SHAPE[2]
    assert not labels.metadata["lightm_reviewed"].any()
    reviewed, values = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, stroke)
    assert (values[stroke] == 1).all()

    go_to(viewer, layer, 5)
    widget.mark_current_reviewed()  # the user checked slice 5: all of it is truth
    reviewed, values = samples_truth(widget)
    expected = stroke.copy()
    expected[5] = True
    np.testing.assert_array_equal(reviewed, expected)
    assert "painted" not in widget.review_summary.text()  # slice 5 has no painted voxels
    go_to(viewer, layer, 2)
    assert f"{int(stroke.sum())} painted/clicked voxels" in widget.review_summary.text()


def test_undo_of_a_paint_takes_back_its_truth_and_redo_restores_it(setup):
    from napari_lightm._napari._finetune_panel import NothingReviewedError, gather_samples

    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    labels.brush_size = 5
    go_to(viewer, layer, 2)
    labels.paint((2, 20, 20), 1)
    stroke = labels.data == 1
    assert f"{int(stroke.sum())} painted/clicked voxels" in widget.review_summary.text()
    labels.undo()  # Ctrl+Z
    assert not labels.data.any()
    assert "painted" not in widget.review_summary.text()
    with pytest.raises(NothingReviewedError):
        gather_samples(widget)  # the undone stroke neither reviews its slice nor is truth
    labels.redo()
    reviewed, _ = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, stroke)

    # a slice the user marked reviewed stays reviewed when a paint on it is undone
    go_to(viewer, layer, 4)
    widget.mark_current_reviewed()
    labels.selected_label = 2
    labels.paint((4, 30, 30), 2)
    labels.undo()
    reviewed, _ = samples_truth(widget)
    expected = stroke.copy()
    expected[4] = True
    np.testing.assert_array_equal(reviewed, expected)
    assert labels.metadata["lightm_reviewed"].tolist() == [z == 4 for z in range(SHAPE[0])]


def test_clicks_add_discs_of_their_class_and_of_background_to_the_samples(setup):
    from napari_lightm._napari._click import add_component, click_roi, remove_component

    viewer, widget, layer = setup
    index = (3, 24, 24)
    region = click_roi(SHAPE, index, 2)
    prediction = np.zeros(tuple(s.stop - s.start for s in region), np.uint8)
    prediction[0, 16:32, 16:32] = 2  # the model's object under the click: class 2
    assert add_component(widget, layer, index, region, prediction) == 16 * 16
    labels = widget.labels_layer()
    positive = disc(index)
    reviewed, values = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, positive)
    assert (values[positive] == 2).all()

    # a negative click on background: a background disc, nothing removed
    outside = (5, 8, 8)
    assert remove_component(widget, layer, outside) == 0
    background = disc(outside)
    reviewed, values = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, positive | background)
    assert (values[background] == 0).all()

    # a negative click on the object, away from the positive disc: the object goes,
    # except the positive click's own disc (truth), and its disc becomes background
    before = np.array(labels.data)
    edge = (3, 18, 18)
    removed = remove_component(widget, layer, edge)
    assert removed == 16 * 16 - positive.sum()
    np.testing.assert_array_equal(labels.data == 2, positive)
    negative = disc(edge)
    reviewed, values = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, positive | background | negative)
    assert (values[negative] == 0).all()
    labels.undo()  # one Ctrl+Z undoes the click and its disc
    np.testing.assert_array_equal(labels.data, before)
    reviewed, _ = samples_truth(widget)
    np.testing.assert_array_equal(reviewed, positive | background)


# --- model writes never change truth ---------------------------------------------------
@pytest.mark.parametrize("mode", ["image", "unreviewed"])
def test_segmenting_keeps_another_class_painted_and_reviewed_voxels(
    setup, qtbot, monkeypatch, seg2d, mode
):
    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    labels.selected_label = 2
    labels.brush_size = 7
    labels.paint((3, 24, 24), 2)  # class 2 painted on slice 3
    painted = labels.data == 2
    widget.tracker.mark(labels, [3])
    widget.tracker.mark(labels, [3], False)  # reviewed or not, painted voxels stay truth
    labels.data_setitem((np.full(3, 6), np.arange(3), np.arange(3)), 2)
    go_to(viewer, layer, 6)
    widget.mark_current_reviewed()  # slice 6: class 2 on 3 pixels, background elsewhere
    reviewed_slice = np.array(labels.data[6])
    predict_constant(monkeypatch, seg2d, 1)

    button = widget.segment_image_button if mode == "image" else widget.finetune.unreviewed_button
    button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    assert (labels.data[painted] == 2).all()
    np.testing.assert_array_equal(labels.data[6], reviewed_slice)
    rest = ~painted
    rest[6] = False
    assert (labels.data[rest] == 1).all()  # everything else took the prediction


def test_clicking_keeps_another_class_painted_and_reviewed_voxels(setup, monkeypatch, seg2d):
    from napari_lightm._napari._click import add_component, click_roi, remove_component

    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    labels.selected_label = 2
    labels.brush_size = 7
    labels.paint((3, 24, 24), 2)
    painted = labels.data == 2
    go_to(viewer, layer, 6)
    widget.mark_current_reviewed()
    # a positive click beside the painted voxels, whose predicted object covers them
    index = (3, 24, 10)
    region = click_roi(SHAPE, index, 2)
    prediction = np.ones(tuple(s.stop - s.start for s in region), np.uint8)
    add_component(widget, layer, index, region, prediction)
    assert (labels.data[painted] == 2).all()
    assert (labels.data[3][~painted[3]] == 1).all()
    # clicks on a reviewed slice change nothing there
    on_reviewed = (6, 24, 24)
    add_component(widget, layer, on_reviewed, click_roi(SHAPE, on_reviewed, 2), prediction)
    assert not labels.data[6].any()
    # a negative click on the painted voxels removes none of them
    assert remove_component(widget, layer, (3, 24, 24)) == 0
    assert (labels.data[painted] == 2).all()


# --- links and teardown ---------------------------------------------------------------
def test_renaming_the_image_during_a_segment_job_updates_its_labels(
    setup, qtbot, monkeypatch, seg2d
):
    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    labels.name = "my corrections"  # renaming the labels keeps the link too
    predict_constant(monkeypatch, seg2d, 1)
    names = [lyr.name for lyr in viewer.layers]
    widget.segment_image_button.click()
    assert widget.runner.busy
    layer.name = "ct renamed"  # while the job runs
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    assert [lyr.name for lyr in viewer.layers] == ["ct renamed", "my corrections"], names
    assert (labels.data == 1).all()
    assert widget.image_picker.currentText() == "ct renamed"
    assert widget.labels_layer().unique_id == labels.unique_id
    assert "slices reviewed" in widget.review_summary.text()


@pytest.mark.slow
def test_closing_the_viewer_during_finetuning_raises_nothing(setup, qtbot):
    viewer, widget, layer = setup
    seg = widget.model.segmenter
    labels = widget.labels_layer(create=True)
    labels.data_setitem((np.full(10, 3), np.arange(10), np.arange(10)), 1)
    go_to(viewer, layer, 3)
    widget.mark_current_reviewed()
    widget.finetune.max_seconds.setValue(0)
    widget.finetune.max_steps.setValue(10_000)
    losses = []
    widget.runner.progressed.connect(lambda p: p.loss is not None and losses.append(p.loss))
    with qtbot.capture_exceptions() as exceptions:
        assert widget.finetune.start()
        worker = widget.runner.worker
        qtbot.waitUntil(lambda: len(losses) >= 2, timeout=WAIT_MS)
        viewer.close()
        t0 = time.monotonic()
        while worker.is_running and time.monotonic() - t0 < 30:
            qtbot.wait(50)
        qtbot.wait(300)  # let every queued signal of the worker arrive
    assert not exceptions, exceptions
    assert not worker.is_running  # the job was cancelled, not left training
    assert seg.version == 0 and widget.model.segmenter is seg  # its result was dropped
