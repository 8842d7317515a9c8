"""The Demo button's result on the CT phantom: the spine class is the spine, air stays air.

A model fine-tuned for only a few steps labels every flat region (air, fat) with one
class, often the spine; how many steps fit a time budget depends on the machine. The
demo trains a seeded model for a fixed number of steps, so it ends in the same place
everywhere: this test runs it as a user does (the button) on a machine made slow (a
clock that moves 10 s per fine-tuning step) and scores the unreviewed slices against
the phantom's truth.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads run many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SlowClock:
    """``time`` for the fine-tuning loop of a machine where every step takes 10 s."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 10.0
        return self.now


def test_demo_labels_the_spine_as_spine_and_leaves_the_air_alone(
    make_napari_viewer_proxy, qtbot, one_thread, monkeypatch
):
    from napari_lightm._napari import _demo
    from napari_lightm.engine import finetuning
    from napari_lightm.io.phantoms import ct_phantom

    monkeypatch.setattr(finetuning, "time", SlowClock())
    viewer = make_napari_viewer_proxy(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget.demo_button.click()
    qtbot.waitUntil(lambda: widget.runner.name == "segment unreviewed", timeout=900_000)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=900_000)
    assert widget.runner.last_status == "finished"
    assert widget.model.segmenter.history[-1]["steps"] == _demo.DEMO_STEPS

    image, truth, _ = ct_phantom(seed=0, shape=_demo.DEMO_SHAPE)
    labels = widget.labels_layer(viewer.layers["CT phantom (demo)"])
    rest = np.setdiff1d(np.arange(image.shape[0]), _demo.demo_slices(image.shape[0]))
    pred, truth, image = np.asarray(labels.data)[rest], truth[rest], image[rest]
    spine, liver = (pred == 2), (pred == 1)
    precision = (spine & (truth == 2)).sum() / max(spine.sum(), 1)
    recall = (spine & (truth == 2)).sum() / (truth == 2).sum()
    air = image < -500
    air_labelled = (pred[air] > 0).mean()
    liver_dice = 2 * (liver & (truth == 1)).sum() / (liver.sum() + (truth == 1).sum())
    print(
        f"unreviewed slices: spine precision {precision:.3f} recall {recall:.3f}, "
        f"air labelled {air_labelled:.4f}, liver Dice {liver_dice:.3f}"
    )
    assert precision > 0.5 and recall > 0.5
    assert air_labelled < 0.05
    assert liver_dice > 0.6
