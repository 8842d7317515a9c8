"""``napari-lightm``: argument parsing and a viewer with the widget and a sample."""

from __future__ import annotations

import pytest

from napari_lightm._napari._launcher import build_parser


def test_parser_accepts_samples_and_rejects_others(capsys):
    assert build_parser().parse_args(["--sample", "ct"]).sample == "ct"
    assert build_parser().parse_args(["a.nii.gz"]).paths == ["a.nii.gz"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sample", "mri"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.gui
@pytest.mark.parametrize(("sample", "ndim"), [("xray", 2), ("ct", 3)])
def test_open_viewer_with_sample_docks_the_widget(qtbot, sample, ndim):
    from napari.layers import Image, Labels

    from napari_lightm._napari._launcher import open_viewer
    from napari_lightm._napari._widget import LightMWidget

    viewer, widget = open_viewer(sample=sample, show=False)
    try:
        assert isinstance(widget, LightMWidget)
        images = [layer for layer in viewer.layers if isinstance(layer, Image)]
        assert len(images) == 1 and images[0].data.ndim == ndim
        assert any(isinstance(layer, Labels) for layer in viewer.layers)  # ground truth
        assert widget.current_image().name == images[0].name
        # the picked sample offers its own classes for a new model
        assert widget.model.dims.currentText() == "2D"  # the few-slice model, also for a volume
        assert widget.model.classes.text()
    finally:
        widget.close()
        viewer.close()
