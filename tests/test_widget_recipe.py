"""The widget runs the core's few-slice recipe (``engine.recipe.DEFAULT_RECIPE``): Fine-tune
hands it to ``iter_finetune`` and "Segment unreviewed" fills the slices between reviewed
ones with their interpolated shape (``engine.unreviewed``), as the API and ``lightm``
do. The model is a stand-in where the test needs to know what it would say."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SHAPE = (12, 40, 40)
REVIEWED = [2, 9]
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def seg2d():
    """A tiny untrained 2D model, built before any viewer (its imports come first)."""
    import torch

    from napari_lightm.engine import Segmenter

    torch.manual_seed(0)
    return Segmenter.new(
        2, ["background", "liver", "kidney"], modality="CT", device="cpu", init_filters=8,
        patch_size=(40, 40),
    )


@pytest.fixture
def setup(seg2d, make_napari_viewer_proxy, tmp_path, monkeypatch):
    """(viewer, widget, image layer as the widget sees it) with a small CT phantom."""
    from conftest import ct_widget

    return ct_widget(make_napari_viewer_proxy, seg2d, SHAPE, tmp_path, monkeypatch)


def growing_disc() -> np.ndarray:
    """Class 1 on a disc whose radius grows by one pixel per slice (a cone)."""
    z, y, x = np.indices(SHAPE)
    return (((y - 20) ** 2 + (x - 20) ** 2) <= (4 + z) ** 2).astype(np.uint8)


def review(widget, labels, truth: np.ndarray) -> None:
    """Paint ``truth`` on the reviewed slices and mark them reviewed, as a person would."""
    for z in REVIEWED:
        idx = np.nonzero(truth[z])
        labels.data_setitem((np.full(idx[0].size, z), *idx), truth[z][idx])
    widget.tracker.mark(labels, REVIEWED)


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def test_finetune_button_trains_with_the_default_recipe(setup, qtbot, monkeypatch):
    import napari_lightm.engine as engine
    from napari_lightm.engine.recipe import DEFAULT_RECIPE

    viewer, widget, layer = setup
    labels = widget.labels_layer(create=True)
    review(widget, labels, growing_disc())
    calls = []
    real = engine.iter_finetune

    def spy(seg, samples, **kwargs):
        calls.append(kwargs)
        return real(seg, samples, **{**kwargs, "max_steps": 1, "max_seconds": None})

    monkeypatch.setattr(engine, "iter_finetune", spy)
    assert widget.finetune.lr.currentText() == "auto"
    widget.finetune.finetune_button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    assert len(calls) == 1
    assert calls[0]["recipe"] is DEFAULT_RECIPE and calls[0]["lr"] is None  # the recipe's LR
    assert widget.model.segmenter.version == 1


def test_segment_unreviewed_fills_between_reviewed_slices_with_their_shape(
    setup, qtbot, monkeypatch, seg2d
):
    from napari_lightm.engine.callbacks import Progress
    from napari_lightm.engine.interpolation import interpolate_labels

    viewer, widget, layer = setup
    cone = growing_disc()
    labels = widget.labels_layer(create=True)
    review(widget, labels, cone)
    labels.data_setitem((np.array([5]), np.array([1]), np.array([1])), 2)  # painted kidney
    before = np.array(labels.data)

    def no_opinion(image, geometry=None, **_kwargs):  # a model that has learnt nothing
        yield Progress(0, 1, "predict")
        return np.zeros((seg2d.n_classes, *image.shape), np.float32)

    monkeypatch.setattr(seg2d, "iter_logits", no_opinion)
    widget.finetune.unreviewed_button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"

    from napari_lightm._napari._segment import layer_geometry

    spacing = layer_geometry(layer).scale  # array order
    expected = interpolate_labels(np.where(before == 1, 1, 0), REVIEWED, spacing)
    between = slice(REVIEWED[0] + 1, REVIEWED[-1])
    got = labels.data[between] == 1
    want = expected[between] == 1
    dice = 2 * (got & want).sum() / (got.sum() + want.sum())
    assert all(got[i].any() for i in range(len(got)))  # every slice between has the organ
    assert dice > 0.95, dice
    assert not (labels.data[: REVIEWED[0]] == 1).any()  # nothing outside the reviewed range
    assert not (labels.data[REVIEWED[-1] + 1 :] == 1).any()
    np.testing.assert_array_equal(labels.data[REVIEWED], before[REVIEWED])  # truth kept
    assert labels.data[5, 1, 1] == 2  # the painted voxel of another class too


def test_volumes_button_shows_each_class_in_ml(setup):
    from napari_lightm._napari._segment import layer_geometry

    viewer, widget, layer = setup
    assert widget.show_volumes() == "no labels yet"
    labels = widget.labels_layer(create=True)
    labels.data_setitem((np.full(30, 4), np.arange(30) % 10, np.arange(30) // 10), 1)
    labels.data_setitem((np.full(5, 7), np.arange(5), np.zeros(5, int)), 2)
    voxel_ml = np.prod(layer_geometry(layer).scale) / 1000
    widget.volumes_button.click()
    text = widget.volumes_label.text()
    shown = {name: float(v) for name, v, _ in (part.split() for part in text.split(" · "))}
    assert shown == pytest.approx({"liver": 30 * voxel_ml, "kidney": 5 * voxel_ml}, rel=1e-2)
    labels.data_setitem((np.full(5, 7), np.arange(5), np.zeros(5, int)), 0)
    assert "kidney" not in widget.show_volumes()  # an emptied class is not listed
