"""The widget's class list: add, rename and colour a class of the loaded model; each edit
is a new model version, reaches the linked Labels layers and is kept by sessions."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(small_widget):
    small_widget.labels_layer(create=True)
    return small_widget


def test_adding_a_class_is_a_new_version_the_labels_show(widget):
    panel, labels = widget.classes, widget.labels_layer()
    before = widget.model.segmenter
    assert panel.list.count() == 2 and panel.add_button.isEnabled()
    index = panel.add_class("kidney", "#00ff00")
    seg = widget.model.segmenter
    assert index == 2 and seg is not before and before.class_names == ["background", "liver"]
    assert seg.class_names == ["background", "liver", "kidney"] and seg.version > before.version
    assert [v for v, _ in widget.model.history] == [before.version, seg.version]
    assert panel.list.count() == 3 and panel.list.item(2).text() == "2  kidney"
    assert labels.metadata["class_names"] == seg.class_names  # what DICOM-SEG names
    np.testing.assert_allclose(labels.colormap.map(np.array([2]))[0], [0, 1, 0, 1], atol=1e-6)
    widget.model.rollback(before.version)
    assert widget.model.segmenter.class_names == ["background", "liver"]
    assert panel.list.count() == 2 and labels.metadata["class_names"] == ["background", "liver"]


def test_rename_and_colour_through_the_dialogs(widget, errors, monkeypatch):
    from qtpy.QtGui import QColor

    panel = widget.classes
    monkeypatch.setattr("qtpy.QtWidgets.QInputDialog.getText", lambda *a, **k: ("Liver", True))
    panel.rename_button.click()
    assert widget.model.segmenter.class_names == ["background", "Liver"]
    monkeypatch.setattr("qtpy.QtWidgets.QColorDialog.getColor", lambda *a, **k: QColor("#ff8000"))
    panel.colour_button.click()
    assert widget.model.segmenter.class_colours == [None, "#ff8000"]
    versions = len(widget.model.history)
    monkeypatch.setattr("qtpy.QtWidgets.QInputDialog.getText",
                        lambda *a, **k: ("background", True))
    panel.rename_button.click()  # a name another class has: refused, nothing saved
    assert errors and "already called 'background'" in errors[-1]
    assert widget.model.segmenter.class_names == ["background", "Liver"]
    assert len(widget.model.history) == versions


def test_a_new_linked_layer_and_a_session_keep_the_classes(widget, tmp_path):
    from napari_lightm.engine import Segmenter
    from napari_lightm.io.session import read_session

    widget.classes.add_class("spleen", (0.0, 0.0, 1.0))
    other = widget.viewer.add_image(np.zeros((4, 32, 32), np.float32), name="ct2")
    labels = widget.labels_layer(other, create=True)
    assert labels.metadata["class_names"] == ["background", "liver", "spleen"]
    np.testing.assert_allclose(labels.colormap.map(np.array([2]))[0], [0, 0, 1, 1], atol=1e-6)
    widget.save_session(tmp_path / "s")
    _, model = read_session(tmp_path / "s")
    back = Segmenter.load(model.checkpoint, device="cpu")
    assert back.class_names == ["background", "liver", "spleen"]
    assert back.class_colours == [None, None, "#0000ff"]
