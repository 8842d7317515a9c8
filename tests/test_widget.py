"""The dock widget's loops in a real viewer under Xvfb.

Segment (aligned, undoable, cancellable, reviewed slices kept), click-to-segment,
fine-tune on reviewed slices (Dice before/after), responsiveness during a CPU run.
Models are tiny (``init_filters=8``, 2D) and the CT phantom small so the module runs
in a few minutes on 2 CPU cores. The documentation's screenshots are made by
``docs/make_screenshots.py`` (same steps), never by the tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SHAPE = (16, 64, 64)
WAIT_MS = 180_000


# --- helpers ------------------------------------------------------------------------
def tiny_segmenter(spatial_dims: int = 2):
    import torch

    from napari_lightm.engine import Segmenter
    from napari_lightm.io.phantoms import CT_CLASSES

    torch.manual_seed(0)
    return Segmenter.new(
        spatial_dims,
        list(CT_CLASSES),
        modality="CT",
        device="cpu",
        init_filters=8,
        patch_size=(64, 64) if spatial_dims == 2 else (16, 64, 64),
    )


def liver_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the phantom's liver (label 1), the organ a few slices can teach a tiny model."""
    t, p = truth == 1, pred == 1
    return float(2 * (t & p).sum() / max(t.sum() + p.sum(), 1))


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


@pytest.fixture(scope="module")
def ct():
    from napari_lightm.io.phantoms import ct_phantom

    return ct_phantom(seed=0, shape=SHAPE)


@pytest.fixture(scope="module")
def tuned():
    """A tiny 2D model fine-tuned (through the engine, no GUI) on another phantom seed."""
    from napari_lightm._napari._finetune_panel import preload_training_modules
    from napari_lightm.engine import FinetuneSample, finetune
    from napari_lightm.io.phantoms import ct_phantom

    preload_training_modules()  # as the widget does before it trains (see its docstring)
    image, labels, geometry = ct_phantom(seed=1, shape=SHAPE)
    sample = FinetuneSample(image, labels, np.ones(labels.shape, bool), geometry)
    return finetune(tiny_segmenter(2), [sample], max_steps=30, lr=3e-3)


@pytest.fixture
def setup(make_napari_viewer_proxy, ct, tmp_path, monkeypatch):
    """(viewer, widget, image layer) with the CT phantom open; files go to tmp_path."""
    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    image, _, geometry = ct
    viewer = make_napari_viewer_proxy(show=False)
    viewer.window.resize(1300, 900)
    layer = viewer.add_image(
        image, name="ct", colormap="gray", contrast_limits=(-200, 300), **geometry.layer_kwargs()
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    return viewer, widget, layer


# --- segment ------------------------------------------------------------------------
def test_segment_image_is_aligned_undoable_and_keeps_reviewed(setup, ct, tuned, qtbot):
    viewer, widget, layer = setup
    image, _, geometry = ct
    seg = tuned  # briefly trained, so it predicts organs
    widget.model.set_segmenter(seg, name="tuned")
    labels = widget.labels_layer(create=True)
    # earlier work: a user label on slice 3 (then marked reviewed) and an earlier model
    # label on slice 9 (no truth: the new prediction replaces it)
    labels.data_setitem((np.full(4, 3), np.arange(4), np.arange(4)), 1)
    stray = np.zeros(image.shape, bool)
    stray[9, np.arange(4), np.arange(4)] = True
    widget.tracker.write(labels, np.full(image.shape, 2, np.uint8), where=stray)
    widget.tracker.mark(labels, [3])
    before = np.array(labels.data)

    widget.segment_image_button.click()
    assert widget.runner.busy  # the work runs in a worker, not in the click
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"

    out = widget.labels_layer()
    assert out.data.dtype == np.uint8 and out.data.shape == image.shape
    for attr in ("scale", "translate"):
        np.testing.assert_allclose(getattr(out, attr), getattr(layer, attr))
    np.testing.assert_allclose(out.affine.affine_matrix, layer.affine.affine_matrix)
    assert out.metadata["geometry"] == layer.metadata["geometry"]
    expected = seg.predict(image, geometry)
    unreviewed = np.ones(SHAPE[0], bool)
    unreviewed[3] = False
    np.testing.assert_array_equal(out.data[unreviewed], expected[unreviewed])
    np.testing.assert_array_equal(out.data[3], before[3])  # reviewed slice untouched
    assert not out.metadata["lightm_reviewed"][unreviewed].any()  # model writes review nothing

    out.undo()  # one Ctrl+Z undoes the whole prediction
    np.testing.assert_array_equal(out.data, before)


def test_cancel_mid_run_leaves_layers_unchanged(setup, qtbot):
    viewer, widget, layer = setup
    widget.model.set_segmenter(tiny_segmenter(2), name="tiny")
    labels = widget.labels_layer(create=True)
    labels.data_setitem((np.full(3, 5), np.arange(3), np.arange(3)), 1)
    before = np.array(labels.data)
    names = [lyr.name for lyr in viewer.layers]
    seen = []

    def _cancel_on_first(progress):
        seen.append(progress)
        widget.cancel_button.click()

    widget.runner.progressed.connect(_cancel_on_first)
    widget.segment_image_button.click()
    wait_idle(qtbot, widget)
    assert seen and seen[0].done < seen[0].total  # cancelled mid-run, not after the end
    assert widget.runner.last_status == "cancelled"
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(labels.data, before)


def test_segment_slice_and_box_write_only_there(setup, ct, qtbot):
    viewer, widget, layer = setup
    image, _, geometry = ct
    seg = tiny_segmenter(2)
    widget.model.set_segmenter(seg, name="tiny")
    labels = widget.labels_layer(create=True)
    labels.data[:] = 7  # a value the model never predicts: every written voxel changes
    full = seg.predict(image, geometry)
    z = 6
    viewer.dims.set_point(0, layer.data_to_world([z, 0, 0])[0])
    widget.segment_slice_button.click()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data[z], full[z])
    assert (np.delete(labels.data, z, axis=0) == 7).all()

    # a rectangle drawn on slice 10 -> exactly its pixels change
    z, (y0, y1, x0, x1) = 10, (8, 40, 12, 50)
    corners = np.array([[z, y0, x0], [z, y0, x1 - 1], [z, y1 - 1, x1 - 1], [z, y1 - 1, x0]], float)
    world = np.array([layer.data_to_world(c) for c in corners])  # Shapes live in world space
    viewer.add_shapes([world], shape_type="rectangle", name="box", units=layer.units)
    widget.segment_box_button.click()
    wait_idle(qtbot, widget)
    written = labels.data[z] != 7
    expected = np.zeros_like(written)
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(written, expected)


def test_bad_input_gives_a_message_and_changes_nothing(setup, qtbot):
    from napari_lightm._napari._segment import SegmentInputError, make_jobs

    viewer, widget, layer = setup
    with pytest.raises(SegmentInputError, match="no model"):
        make_jobs(widget, "image")
    widget.segment_image_button.click()  # same, through the button: a notification
    assert not widget.runner.busy
    assert widget.labels_layer() is None
    widget.model.set_segmenter(tiny_segmenter(3), name="tiny3d")
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    widget.set_image(viewer.layers["flat"])
    with pytest.raises(SegmentInputError, match="3D model cannot segment the 2D image 'flat'"):
        make_jobs(widget, "image")
    with pytest.raises(SegmentInputError, match="Shapes"):
        widget.set_image(layer)
        make_jobs(widget, "box")


# --- click-to-segment ---------------------------------------------------------------
def test_click_positive_adds_the_component_negative_removes_it(setup, ct, tuned, qtbot):
    from scipy import ndimage

    from napari_lightm._napari._click import click_roi
    from napari_lightm._napari.annotation import click_disc

    viewer, widget, layer = setup
    image, truth, geometry = ct
    widget.model.set_segmenter(tuned, name="tuned")
    z = 8
    # click deep inside the phantom's liver, where the model also sees liver
    from scipy import ndimage as ndi

    inside = (truth[z] == 1) & (tuned.predict(image[z : z + 1], geometry)[0] == 1)
    depth = ndi.distance_transform_edt(inside)
    index = (z, *np.unravel_index(int(np.argmax(depth)), depth.shape))
    region = click_roi(image.shape, index, 2)
    prediction = tuned.predict(image, geometry, roi=region)
    rel = tuple(i - s.start for i, s in zip(index, region))
    cls = int(prediction[rel])
    assert cls == 1, "the tuned model should predict liver under the click"
    comps, _ = ndimage.label(prediction == cls)
    expected = np.zeros(image.shape, np.uint8)
    expected[region][comps == comps[rel]] = cls
    disc = click_disc(image.shape, index)  # the click's own disc is truth of its class
    expected[disc] = cls

    widget.click_button.click()  # click mode: a Points layer in add mode
    points = viewer.layers["LightM clicks"]
    assert points.mode == "add"
    # what a mouse click in add mode does: world position -> the Points layer's data
    world = layer.data_to_world(index)
    points.add(points.world_to_data(world))
    wait_idle(qtbot, widget)
    labels = widget.labels_layer()
    np.testing.assert_array_equal(labels.data, expected)
    assert widget.clicks.last_changed == int((expected > 0).sum())

    widget.polarity_button.click()  # negative, on the object away from the first click
    assert not widget.clicks.positive
    away = (z, *np.argwhere((expected[z] > 0) & ~disc[z])[0])
    points.add(points.world_to_data(layer.data_to_world(away)))
    assert not widget.runner.busy  # a removal needs no model run
    # the object is gone, except the positive click's disc: that is the user's truth
    np.testing.assert_array_equal(labels.data, np.where(disc, cls, 0))
    labels.undo()  # each click is one undo step
    np.testing.assert_array_equal(labels.data, expected)


# --- fine-tune ----------------------------------------------------------------------
def test_finetune_on_three_reviewed_slices_raises_unreviewed_dice(setup, ct, qtbot):
    viewer, widget, layer = setup
    image, truth, geometry = ct
    seg = tiny_segmenter(2)
    widget.model.set_segmenter(seg, name="ft")
    reviewed = [3, 8, 13]
    unreviewed = np.setdiff1d(np.arange(SHAPE[0]), reviewed)
    before = liver_dice(seg.predict(image, geometry)[unreviewed], truth[unreviewed])

    # the user corrects 3 slices (paints the truth there) and marks them reviewed
    labels = widget.labels_layer(create=True)
    for z in reviewed:
        idx = np.nonzero(truth[z])
        labels.data_setitem((np.full(idx[0].size, z), *idx), truth[z][idx])
    assert not labels.metadata["lightm_reviewed"].any()  # painting alone reviews nothing
    widget.tracker.mark(labels, reviewed)
    assert np.flatnonzero(labels.metadata["lightm_reviewed"]).tolist() == reviewed
    reviewed_before = np.array(labels.data[reviewed])

    widget.finetune.max_seconds.setValue(0)
    widget.finetune.max_steps.setValue(60)
    assert widget.finetune.learning_rate() is None  # "auto": the recipe picks it
    widget.finetune.finetune_button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    new = widget.model.segmenter
    assert new.version == seg.version + 1
    assert len(widget.finetune.plot.losses) == 60, len(widget.finetune.plot.losses)
    assert [v for v, _ in widget.model.history] == [seg.version, new.version]
    assert (Path(widget.autosave()) / "session.json").is_file()

    widget.finetune.unreviewed_button.click()
    wait_idle(qtbot, widget)
    after = liver_dice(labels.data[unreviewed], truth[unreviewed])
    print(f"liver Dice of the unreviewed slices: before {before:.3f}, after {after:.3f}")
    # measured: before 0.00 (untrained), after 0.69 (0.68-0.78 with one thread, AVX2
    # kernels or the torch scan; 60 steps at lr 3e-3)
    assert before < 0.2 and after > 0.45 and after > before + 0.3
    np.testing.assert_array_equal(labels.data[reviewed], reviewed_before)

    widget.model.rollback(seg.version)  # roll back to the untrained version
    assert widget.model.segmenter.version == seg.version


def test_demo_runs_the_whole_loop(setup, qtbot, monkeypatch):
    from napari_lightm._napari import _demo

    viewer, widget, layer = setup
    monkeypatch.setattr(_demo, "DEMO_SHAPE", SHAPE)
    monkeypatch.setattr(_demo, "DEMO_STEPS", 3)
    widget.demo_button.click()
    # fine-tune, then "segment unreviewed" starts by itself
    qtbot.waitUntil(lambda: widget.runner.name == "segment unreviewed", timeout=WAIT_MS)
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    demo = viewer.layers["CT phantom (demo)"]
    labels = widget.labels_layer(demo)
    reviewed = np.flatnonzero(labels.metadata["lightm_reviewed"]).tolist()
    assert reviewed == _demo.demo_slices(SHAPE[0])
    assert widget.model.segmenter.version == 1
    assert len(widget.finetune.plot.losses) >= 1
    _, truth, _ = __import__("napari_lightm.io.phantoms", fromlist=["ct_phantom"]).ct_phantom(
        seed=0, shape=SHAPE
    )
    np.testing.assert_array_equal(labels.data[reviewed], truth[reviewed])


# --- responsiveness -----------------------------------------------------------------
#: the longest the Qt event loop may stall while a CPU segmentation worker runs; measured
#: on the shared 2-core CI-like machine: median tick gap 10 ms (the timer period), max
#: 0.2-0.5 s (torch's 2 intra-op threads compete with the GUI thread for the 2 cores)
MAX_STALL_S = 1.0


def test_event_loop_stays_responsive_during_cpu_segmentation(setup, qtbot):
    from qtpy.QtCore import QTimer

    viewer, widget, layer = setup
    seg = tiny_segmenter(2)
    # compile the numba scan kernel first: a one-time cost per process, not the steady state
    seg.predict(np.zeros((1, 16, 16), np.float32))
    widget.model.set_segmenter(seg, name="tiny")
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: widget.runner.busy and ticks.append(time.perf_counter()))
    timer.start()
    widget.segment_image_button.click()
    t0 = time.perf_counter()
    wait_idle(qtbot, widget)
    run = time.perf_counter() - t0
    timer.stop()
    gaps = np.diff(ticks)
    print(
        f"worker ran {run:.2f}s; {len(ticks)} ticks; max event-loop gap {gaps.max():.3f}s, "
        f"median {np.median(gaps):.3f}s"
    )
    assert len(ticks) > 10
    assert gaps.max() < MAX_STALL_S
