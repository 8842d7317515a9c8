"""A first run that leads somewhere: pretrained models by name, X-ray pixel spacing, and
the widget following what the user opens, selects and loads (real viewer under Xvfb)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

WAIT_MS = 300_000


@pytest.fixture
def one_thread():
    """One torch thread while a test runs models: a shared 2-core machine runs two threads
    many times slower than one (they wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    """What the widget shows with show_error / show_info (collected, not displayed)."""
    shown: dict[str, list[str]] = {"error": [], "info": []}
    monkeypatch.setattr("napari.utils.notifications.show_error", shown["error"].append)
    monkeypatch.setattr("napari.utils.notifications.show_info", shown["info"].append)
    return shown


@pytest.fixture
def viewer_widget(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    return viewer, widget


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=WAIT_MS)


def tiny_xray_model(field_of_view=(358.4, 358.4)):
    """A small untrained X-ray model that records a training field of view."""
    import torch

    from napari_lightm.engine import Segmenter
    from napari_lightm.io.phantoms import XRAY_CLASSES

    torch.manual_seed(0)
    seg = Segmenter.new(2, list(XRAY_CLASSES), modality="XR", spacing=(1.4, 1.4),
                        device="cpu", init_filters=8, patch_size=(64, 64))
    seg.preprocessing.field_of_view = field_of_view
    return seg


def pixel_xray(size: int = 128):
    """The X-ray phantom as a PNG reader gives it: no spacing (geometry units "pixel")."""
    from napari_lightm.io import Geometry
    from napari_lightm.io.phantoms import xray_phantom

    image, labels, _ = xray_phantom(seed=0, size=size)
    return image, labels, Geometry.identity(2, units="pixel", modality="XR")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- pretrained models ------------------------------------------------------------------
@pytest.mark.slow
def test_pick_the_pretrained_model_and_segment_the_xray_sample(viewer_widget, qtbot, one_thread):
    viewer, widget = viewer_widget
    viewer.open_sample("napari-lightm", "xray")
    image = viewer.layers["xray phantom"]
    truth = np.asarray(viewer.layers["xray phantom ground truth"].data)
    assert widget.current_image().name == image.name  # the opened image is the picked one

    panel = widget.model
    assert panel.pretrained.findData("cxr-lungs") >= 0  # listed by name, no file dialog
    panel.pretrained.setCurrentIndex(panel.pretrained.findData("cxr-lungs"))
    assert "right lung, left lung, heart" in panel.pretrained_info.text()
    panel.pretrained_button.click()
    seg = panel.segmenter
    assert panel.name == "cxr-lungs" and seg.modality == "XR"
    assert "cxr-lungs" in panel.info.text() and "pretrained" in panel.info.text()
    assert panel.dims.currentText() == "2D"
    panel.card_button.click()  # the card, as text
    assert "JSRT" in panel.card_view.toPlainText() and "Limits" in panel.card_view.toPlainText()
    panel.card_dialog.close()

    widget.segment_image_button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished"
    labels = widget.labels_layer()
    out = np.asarray(labels.data)
    half = out.shape[1] // 2
    # patient's right lung (label 1) on the image's left half, left lung on the right
    assert (out[:, :half] == 1).sum() > 0.98 * (out == 1).sum() > 0
    assert (out[:, half:] == 2).sum() > 0.98 * (out == 2).sum() > 0
    for k in (1, 2, 3):
        t, p = truth == k, out == k
        assert 2 * (t & p).sum() / (t.sum() + p.sum()) >= 0.9, k
    labels.undo()  # one Ctrl+Z takes the whole segmentation back
    assert not np.asarray(labels.data).any()


def test_card_and_description_of_each_shipped_model(viewer_widget):
    from napari_lightm.engine.zoo import pretrained_models

    _, widget = viewer_widget
    names = [widget.model.pretrained.itemData(i) for i in range(widget.model.pretrained.count())]
    assert names == [m.name for m in pretrained_models()] and "cxr-lungs" in names
    for model in pretrained_models():
        assert widget.model.card_text(model.name) == model.card_text()


def test_finetuning_a_pretrained_model_saves_a_new_user_model(
    viewer_widget, qtbot, tmp_path, monkeypatch, one_thread
):
    from napari_lightm.engine import store
    from napari_lightm.engine.zoo import find_pretrained, is_shipped

    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    viewer, widget = viewer_widget
    shipped = find_pretrained("cxr-lungs").path
    before = digest(shipped)
    image, labels, geometry = pixel_xray(64)
    layer = viewer.add_image(image, name="film", **geometry.layer_kwargs())
    widget.model.load_pretrained("cxr-lungs")
    # the user reviews the image: its labels are truth
    target = widget.labels_layer(create=True)
    widget.tracker.write(target, labels, protect_reviewed=False)
    widget.tracker.mark(target, [0])
    widget.finetune.max_seconds.setValue(0)
    widget.finetune.max_steps.setValue(1)
    widget.finetune.finetune_button.click()
    wait_idle(qtbot, widget)
    assert widget.runner.last_status == "finished", widget.finetune.summary.text()

    saved = dict(widget.model.history)[widget.model.segmenter.version]
    assert saved.parent == tmp_path / "models" and not is_shipped(saved)
    assert saved.name.startswith("cxr-lungs-ft_v") and saved.is_file()
    assert store.user_models(tmp_path / "models") == [saved]
    assert widget.model.name == "cxr-lungs-ft"
    assert digest(shipped) == before  # the shipped file is never written
    assert layer in viewer.layers


def test_a_model_folder_inside_the_shipped_models_is_refused(
    viewer_widget, tmp_path, monkeypatch
):
    """Saving never writes next to shipped files, even when the model folder points there."""
    from napari_lightm._napari._model_panel import ShippedModelWriteError
    from napari_lightm.engine import zoo

    zoo_copy = tmp_path / "zoo"
    zoo_copy.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", zoo_copy)
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(zoo_copy))
    _, widget = viewer_widget
    widget.model.set_segmenter(tiny_xray_model(), name="mine")
    with pytest.raises(ShippedModelWriteError, match="NAPARI_LIGHTM_MODELS"):
        widget.model.save_version()
    assert list(zoo_copy.iterdir()) == []


# --- pixel spacing of X-rays without one ------------------------------------------------
def test_spacing_field_shows_the_estimate_and_an_edit_is_what_the_model_sees(
    viewer_widget, qtbot, monkeypatch, messages
):
    from napari_lightm.io import Geometry

    viewer, widget = viewer_widget
    image, _, geometry = pixel_xray(128)
    layer = viewer.add_image(image, name="film.png", **geometry.layer_kwargs())
    # no model yet: unknown, never a silent 1 mm per pixel
    assert widget.spacing.text() == "unknown" and "unknown" in widget.spacing_note.text()
    seg = tiny_xray_model()
    widget.model.set_segmenter(seg, name="xr")
    # the model's estimate: the shorter side spans its 358.4 mm field of view
    assert widget.spacing.value() == pytest.approx(358.4 / 128, abs=1e-4)
    assert widget.spacing.isEnabled() and "estimated" in widget.spacing_note.text()

    seen = []
    real = seg.iter_predict

    def recording(image, geometry=None, **kw):
        seen.append(seg.input_spacing(image.shape, geometry)[0])
        return real(image, geometry, **kw)

    monkeypatch.setattr(seg, "iter_predict", recording)
    widget.segment_image_button.click()
    wait_idle(qtbot, widget)
    assert seen[-1] == pytest.approx((2.8, 2.8))

    widget.spacing.setValue(0.7)  # the user knows better: 0.7 mm per pixel
    meta = Geometry.from_dict(layer.metadata["geometry"])
    assert meta.spacing == (0.7, 0.7) and meta.units == "mm"
    assert meta.extra["spacing_estimated"] is False
    np.testing.assert_allclose(layer.scale, (0.7, 0.7))
    labels = widget.labels_layer()
    np.testing.assert_allclose(labels.scale, layer.scale)  # labels stay on the image
    assert labels.metadata["geometry"] == layer.metadata["geometry"]
    widget.segment_image_button.click()
    wait_idle(qtbot, widget)
    assert seen[-1] == pytest.approx((0.7, 0.7))
    assert widget.spacing.value() == pytest.approx(0.7)  # still shown, still editable
    assert widget.spacing.isEnabled() and "by hand" in widget.spacing_note.text()
    assert not messages["error"]


def test_a_spacing_from_the_file_is_shown_read_only(viewer_widget):
    from napari_lightm.io.phantoms import xray_phantom

    viewer, widget = viewer_widget
    image, _, geometry = xray_phantom(seed=0, size=64)
    layer = viewer.add_image(image, name="film.dcm", **geometry.layer_kwargs())
    widget.model.set_segmenter(tiny_xray_model(), name="xr")
    assert widget.spacing.value() == pytest.approx(360 / 64, abs=1e-4)
    assert not widget.spacing.isEnabled() and "from the file" in widget.spacing_note.text()
    with pytest.raises(ValueError, match="from its file"):
        widget.set_spacing(1.0)
    np.testing.assert_allclose(layer.scale, (360 / 64,) * 2)


# --- the widget follows the user ----------------------------------------------------------
def test_no_model_messages_name_the_next_action(viewer_widget, messages):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    for action in ("Use", "Demo", "New model", "Load"):
        assert action in widget.model.info.text()
    widget.segment_image_button.click()
    widget.finetune.finetune_button.click()
    widget.clicks.click((16.0, 16.0), True)
    assert len(messages["error"]) == 3
    for message in messages["error"]:
        assert message.startswith("no model")
        for action in ("pretrained", "Demo", "New model", "Load"):
            assert action in message
    assert not widget.runner.busy


def test_the_image_picker_follows_the_selected_and_the_opened_layer(viewer_widget):
    viewer, widget = viewer_widget

    def picked() -> str:
        return widget.current_image().name

    first = viewer.add_image(np.zeros((16, 16), np.float32), name="first")
    viewer.add_image(np.ones((16, 16), np.float32), name="second")
    assert picked() == "second"  # opened last
    viewer.layers.selection.active = first
    assert picked() == "first"  # selected
    second = viewer.layers["second"]
    labels_of_second = widget.labels_layer(second, create=True)
    viewer.layers.selection.active = first
    viewer.layers.selection.active = viewer.layers[labels_of_second.name]  # its image
    assert picked() == "second"
    viewer.layers.selection.active = first
    viewer.add_image(np.ones((16, 16), np.float32), name="third")
    assert picked() == "third"


def test_new_model_box_and_summary_follow_the_loaded_model(viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="volume")
    panel = widget.model
    assert panel.dims.currentText() == "2D"  # the few-slice recipe's model, for a volume too
    panel.config.setCurrentText("light")
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="volume 2")
    assert panel.dims.currentText() == "3D"  # a 3D model is offered for light and repo
    path = tiny_xray_model().save(tmp_path / "xr2d.safetensors")
    panel.load_path(path)
    assert panel.dims.currentText() == "2D"
    assert panel.classes.text() == "right lung, left lung, heart"
    assert "xr2d" in panel.info.text() and "2D XR" in panel.info.text()
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="another volume")
    assert panel.dims.currentText() == "2D"  # the loaded model's, not the image's (3D)


def test_a_segmentation_that_changes_nothing_offers_no_undo(
    viewer_widget, qtbot, messages, one_thread
):
    viewer, widget = viewer_widget
    image, _, geometry = pixel_xray(64)
    viewer.add_image(image, name="film", **geometry.layer_kwargs())
    widget.model.set_segmenter(tiny_xray_model(field_of_view=(64 * 1.4,) * 2), name="xr")
    widget.segment_image_button.click()
    wait_idle(qtbot, widget)
    labels = widget.labels_layer()
    history = getattr(labels, "__wrapped__", labels)._undo_history
    steps = len(history)
    widget.segment_image_button.click()  # the same model again: the same labels
    wait_idle(qtbot, widget)
    assert len(history) == steps  # no empty undo step
    last = messages["info"][-1]
    assert "nothing changed" in last and "Ctrl+Z" not in last
