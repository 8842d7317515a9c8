"""The widget in a real viewer: closing the viewer mid-job."""

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
    from napari_lightm.io.phantoms import ct_phantom

    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    image, _, geometry = ct_phantom(seed=0, shape=SHAPE)
    viewer = make_napari_viewer_proxy(show=False)
    viewer.add_image(image, name="ct", **geometry.layer_kwargs())
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget.model.set_segmenter(seg2d, name="tiny")
    return viewer, widget, widget.current_image()


def go_to(viewer, layer, z: int) -> None:
    viewer.dims.set_point(0, layer.data_to_world([z, 0, 0])[0])


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
