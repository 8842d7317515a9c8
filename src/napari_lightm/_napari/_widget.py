"""The dock widget: a QWidget shell that gathers inputs, calls the core and applies results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

from napari_lightm import __version__

if TYPE_CHECKING:
    import napari


class LightMWidget(QWidget):
    """LightM-UNet segmentation panel docked in napari."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("LightMWidget")
        layout = QVBoxLayout(self)
        self.title = QLabel(f"<b>LightM-UNet</b> segmentation &middot; v{__version__}")
        layout.addWidget(self.title)
        layout.addStretch(1)
