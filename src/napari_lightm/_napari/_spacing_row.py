"""The picked image's in-plane pixel spacing: shown read-only when its file has one,
else the model's estimate or what the user typed (editable), with a note saying which;
never a silent 1 mm."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QLabel, QWidget

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext


class SpacingRow(QWidget):
    """``spacing:`` [mm/px] and a note; ``on_error`` reports a refused edit (the widget's
    notification guard)."""

    def __init__(self, context: PluginContext, on_error: Callable):
        super().__init__()
        self.context = context
        self.on_error = on_error
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("spacing:"))
        self.box = QDoubleSpinBox()
        self.box.setDecimals(4)
        self.box.setRange(0.0, 100.0)
        self.box.setSingleStep(0.01)
        self.box.setSuffix(" mm/px")
        self.box.setSpecialValueText("unknown")  # shown at 0: never a silent 1 mm
        self.box.setKeyboardTracking(False)  # one edit when typing ends, not per key
        self.box.setToolTip("in-plane pixel spacing the model is given for this image")
        row.addWidget(self.box)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        row.addWidget(self.note, 1)
        self.box.valueChanged.connect(self._on_edited)

    def refresh(self) -> None:
        """Show the picked image's pixel spacing and where it comes from."""
        from napari_lightm._napari._segment import spacing_state

        image = self.context.current_image()
        self.box.blockSignals(True)
        try:
            if image is None:
                self.box.setValue(0.0)
                self.box.setEnabled(False)
                self.note.setText("")
                return
            state = spacing_state(image, self.context.model.segmenter)
            self.box.setValue(state.value or 0.0)
            self.box.setEnabled(state.editable)
            self.box.setReadOnly(not state.editable)
            self.note.setText(state.note)
            self.note.setToolTip(state.note)
        finally:
            self.box.blockSignals(False)

    def set_spacing(self, spacing_mm: float, image_layer=None) -> None:
        """Use ``spacing_mm`` (mm per pixel, in-plane) for an image without a spacing of its
        own (default: the picked one): what Segment, Click and Fine-tune give the model."""
        from napari_lightm._napari._segment import set_layer_spacing, spacing_state

        layer = image_layer or self.context.current_image()
        if layer is None:
            raise ValueError("open an image first")
        if not spacing_state(layer, self.context.model.segmenter).editable:
            raise ValueError(f"'{layer.name}' has a pixel spacing from its file; it stays")
        set_layer_spacing(self.context.viewer, layer, spacing_mm)
        if layer is self.context.current_image():
            self.refresh()

    def _on_edited(self, value: float) -> None:
        if value > 0:
            self.on_error(self.set_spacing, value)


__all__ = ["SpacingRow"]
