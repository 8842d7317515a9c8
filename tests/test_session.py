"""Session folders: save -> close -> reopen restores labels and reviewed slices."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_lightm.io.session import (
    SessionError,
    SessionImage,
    read_session,
    write_session,
)


@pytest.mark.parametrize("shape", [(6, 20, 24), (30, 40)])
def test_write_read_round_trip(tmp_path, shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    reviewed = np.zeros(shape[0] if len(shape) == 3 else 1, bool)
    reviewed[0] = True
    image = rng.normal(size=shape).astype(np.float32)
    item = SessionImage(
        "img",
        labels,
        reviewed,
        source=None,
        image=image,
        geometry={"spacing": [1.0] * len(shape)},
        layer={"scale": [1.0] * 3},
    )
    write_session(tmp_path / "s", [item])
    (back,), model = read_session(tmp_path / "s")
    assert model is None
    assert back.name == "img" and back.labels.dtype == np.uint8
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.reviewed, reviewed)
    np.testing.assert_array_equal(back.image, image)
    assert back.geometry == item.geometry


def test_source_file_is_referenced_not_copied(tmp_path):
    source = tmp_path / "ct.nii.gz"
    source.write_bytes(b"stand-in")
    item = SessionImage(
        "ct",
        np.zeros((2, 4, 4), np.uint8),
        np.zeros(2, bool),
        source=str(source),
        image=np.zeros((2, 4, 4)),
    )
    write_session(tmp_path / "s", [item])
    assert not list((tmp_path / "s").glob("image_*.npy"))
    (back,), _ = read_session(tmp_path / "s")
    assert back.source == str(source) and back.image is None


def test_bad_session_folders_raise_clear_errors(tmp_path):
    with pytest.raises(SessionError, match="no session.json"):
        read_session(tmp_path)
    (tmp_path / "session.json").write_text("{not json")
    with pytest.raises(SessionError, match="not valid JSON"):
        read_session(tmp_path)
    (tmp_path / "session.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SessionError, match="not a napari-lightm session"):
        read_session(tmp_path)
    manifest = write_session(
        tmp_path / "s", [SessionImage("a", np.zeros((3, 3), np.uint8), np.ones(1))]
    )
    (tmp_path / "s" / json.loads(manifest.read_text())["images"][0]["labels_file"]).unlink()
    with pytest.raises(SessionError, match="'a'"):
        read_session(tmp_path / "s")
    assert issubclass(SessionError, ValueError)


@pytest.mark.gui
def test_save_close_reopen_restores_labels_reviewed_and_painted_truth(
    make_napari_viewer_proxy, tmp_path, monkeypatch
):
    from napari_lightm.io.phantoms import ct_phantom

    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(tmp_path / "home"))
    image, truth, geometry = ct_phantom(seed=0, shape=(12, 48, 48))
    viewer = make_napari_viewer_proxy(show=False)
    viewer.add_image(image, name="ct", **geometry.layer_kwargs())
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    labels = widget.labels_layer(create=True)
    # the user paints on slice 4 (a brush stroke) and marks slice 7 reviewed without edits
    labels.selected_label = 2
    labels.brush_size = 5
    labels.paint((4, 20, 20), 2)
    viewer.dims.set_point(0, viewer.layers["ct"].data_to_world([7, 0, 0])[0])
    widget.mark_current_reviewed()
    expected_reviewed = np.zeros(12, bool)
    expected_reviewed[7] = True  # the stroke is truth where painted; slice 4 is not reviewed
    np.testing.assert_array_equal(labels.metadata["lightm_reviewed"], expected_reviewed)
    expected_labels = np.array(labels.data)
    assert expected_labels[4].sum() > 0
    expected_marked = widget.tracker.annotation(labels).marked().copy()
    np.testing.assert_array_equal(expected_marked, expected_labels == 2)

    widget.save_session(tmp_path / "session")
    viewer.layers.clear()  # close everything

    viewer2 = make_napari_viewer_proxy(show=False)
    _, widget2 = viewer2.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget2.open_session(tmp_path / "session")
    reopened = widget2.labels_layer()
    np.testing.assert_array_equal(reopened.data, expected_labels)
    np.testing.assert_array_equal(reopened.metadata["lightm_reviewed"], expected_reviewed)
    np.testing.assert_array_equal(widget2.tracker.annotation(reopened).marked(), expected_marked)
    # the image comes back in its geometry, and the labels are linked and aligned with it
    np.testing.assert_allclose(viewer2.layers["ct"].scale, geometry.scale)
    np.testing.assert_allclose(reopened.scale, geometry.scale)
    assert "7" in widget2.review_summary.text() and "4" not in widget2.review_summary.text()
