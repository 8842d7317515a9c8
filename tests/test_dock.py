"""The widget docks through the npe2 manifest in a real viewer under Xvfb.

The screenshot goes to a temporary folder: ``docs/make_screenshots.py`` makes the
documentation's pictures; tests never write tracked files.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_dock_through_manifest_and_screenshot(make_napari_viewer_proxy, qtbot, tmp_path):
    from napari_lightm._napari._widget import LightMWidget
    from napari_lightm.io.phantoms import ct_phantom

    viewer = make_napari_viewer_proxy(show=False)
    viewer.window.resize(1300, 900)
    image, _, geometry = ct_phantom(seed=0, shape=(24, 96, 96))
    viewer.add_image(
        image,
        name="CT phantom",
        colormap="gray",
        contrast_limits=(-200, 300),
        **geometry.layer_kwargs(),
    )
    dock, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")

    assert isinstance(widget, LightMWidget)
    assert widget.current_image().name == "CT phantom"  # the picker saw the layer
    # every action button shows its key
    assert widget.segment_image_button.text().endswith("[G]")
    # the CPU notice is there and not hidden on this CPU-only machine
    assert not widget.model.cpu_notice.isHidden()

    viewer.reset_view()
    path = tmp_path / "screenshot_widget.png"
    # a full-window grab first: with show=False the first canvas-only grab comes back black
    shot = viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[-1] == 4
    assert path.stat().st_size < 600_000
    # the widget itself is drawn (not one flat colour)
    grab = widget.grab().toImage()
    assert grab.width() > 100 and grab.height() > 100
    assert np.asarray(shot)[..., :3].std() > 1
