"""The widget's model versions and sessions when saving fails, and where it writes.

A failed save leaves the current model and the saved session as they were and shows one
notification; no exception leaves a Qt slot; versions are never replaced; nothing is
written under the user's home folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

CLASSES = ["background", "liver"]


@pytest.fixture
def widget(small_widget):
    return small_widget


def finetuned(seg):
    """What a fine-tuning run returns: a copy, other weights, version + 1, a history entry."""
    import torch

    new = seg.copy()
    with torch.no_grad():
        next(new.model.parameters()).add_(0.5)
    new.version = seg.version + 1
    new.history.append({"kind": "finetune", "from_version": seg.version})
    return new


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finetune_after_rollback_never_replaces_a_version(qtbot, tmp_path, monkeypatch):
    from napari_lightm._napari._model_panel import ModelPanel

    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    panel = ModelPanel()
    qtbot.addWidget(panel)
    panel.new_model(2, CLASSES, init_filters=8)
    p0 = panel.save_version()
    first = finetuned(panel.segmenter)
    p1 = panel.save_version(first)
    panel.set_segmenter(first)
    kept = digest(p1)

    panel.rollback(0)
    assert panel.segmenter.version == 0
    second = finetuned(panel.segmenter)
    p2 = panel.save_version(second)
    assert len({p0, p1, p2}) == 3 and p2.exists()
    assert digest(p1) == kept
    assert [v for v, _ in panel.history] == [0, 1, 2]
    assert second.version == 2


def test_failed_version_save_keeps_the_old_model_current(widget, errors, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file where the model folder would go")
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(blocker / "models"))
    old = widget.model.segmenter
    new = finetuned(old)

    widget.finetune._on_result(new)  # the fine-tune worker's result handler

    assert widget.model.segmenter is old
    assert len(errors) == 1 and "not saved" in errors[0]
    assert "model unchanged" in widget.finetune.summary.text()

    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    widget.finetune._on_result(new)
    assert widget.model.segmenter is new
    assert (tmp_path / "models" / f"{widget.model.name}_v001.safetensors").is_file()
    assert len(errors) == 1


def test_session_save_errors_are_one_notification_and_keep_the_old_session(
    widget, errors, tmp_path, monkeypatch
):
    from napari_lightm.io.session import read_session

    widget.labels_layer(create=True)
    folder = tmp_path / "session"
    widget.save_session(folder)
    before = {p.name: digest(p) for p in folder.iterdir()}

    def full_disk(fd):  # a full disk often shows only when the data is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    monkeypatch.setattr(
        "qtpy.QtWidgets.QFileDialog.getExistingDirectory", lambda *a, **k: str(folder)
    )
    widget._on_save_session()  # the "Save session…" button
    assert len(errors) == 1 and "No space left" in errors[0]
    assert {p.name: digest(p) for p in folder.iterdir()} == before
    images, model = read_session(folder)
    assert len(images) == 1 and model.version == 0

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr(
        "qtpy.QtWidgets.QFileDialog.getExistingDirectory", lambda *a, **k: str(blocker / "s")
    )
    widget._on_save_session()
    assert len(errors) == 2


def test_opening_a_tampered_session_changes_nothing(widget, errors, tmp_path, monkeypatch):
    labels = widget.labels_layer(create=True)
    labels.data[1] = 1
    folder = tmp_path / "session"
    widget.save_session(folder)
    doc = json.loads((folder / "session.json").read_text())
    np.save(tmp_path / "elsewhere.npy", np.full(labels.data.shape, 2, labels.data.dtype))
    doc["images"][0]["labels_file"] = "../elsewhere.npy"  # a valid array outside the folder
    (folder / "session.json").write_text(json.dumps(doc))
    labels.data[2] = 1  # painted after the save
    expected = np.array(labels.data)
    seg = widget.model.segmenter
    monkeypatch.setattr(
        "qtpy.QtWidgets.QFileDialog.getExistingDirectory", lambda *a, **k: str(folder)
    )

    widget._on_open_session()  # the "Open session…" button

    assert len(errors) == 1 and "outside the session folder" in errors[0]
    np.testing.assert_array_equal(labels.data, expected)
    assert widget.model.segmenter is seg


def test_widget_writes_nothing_under_the_home_folder(
    make_napari_viewer_proxy, tmp_path, monkeypatch
):
    monkeypatch.delenv("NAPARI_LIGHTM_HOME")
    monkeypatch.delenv("NAPARI_LIGHTM_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    viewer = make_napari_viewer_proxy(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget.model.refresh_recent()
    assert widget.model.recent.count() == 0
    assert not (tmp_path / ".napari-lightm").exists()
