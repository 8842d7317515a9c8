"""The "Classes" box: the loaded model's classes, which the user can add to, rename and
colour (:mod:`napari_lightm.engine.classes` does the editing).

Each edit makes a new version of the model in the store (the previous one stays, so
Versions can roll it back) and becomes the current model; names and colours are part of
the model, so sessions and checkpoints keep them, and every Labels layer linked to an
open image shows them (its ``class_names`` metadata, which the DICOM-SEG writer names
segments by, and its colours). An added class predicts nothing until it is fine-tuned on
voxels painted with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_lightm._napari._model_panel import NO_MODEL
from napari_lightm._napari._review import find_labels

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext

UNKNOWN_VALUE_RGBA = (0.5, 0.5, 0.5, 1.0)  # a label value the model has no class for


def show_classes(labels_layer: Any, names: list[str], colours: list[str | None]) -> None:
    """Name the classes of ``labels_layer`` and, where a class has a colour, draw it so
    (the others keep the colours napari gave them)."""
    labels_layer.metadata["class_names"] = list(names)
    if not any(colours[1:]):
        return
    from napari.utils.colormaps import DirectLabelColormap

    current = labels_layer.colormap
    table: dict[Any, Any] = {None: np.array(UNKNOWN_VALUE_RGBA), 0: np.zeros(4)}
    for k in range(1, len(names)):
        if colours[k]:
            table[k] = np.array([*QColor(colours[k]).getRgbF()[:3], 1.0])
        else:
            table[k] = np.asarray(current.map(np.array([k]))[0], float)
    labels_layer.colormap = DirectLabelColormap(color_dict=table)


class ClassesPanel(QGroupBox):
    """The class list of ``context``'s model; ``on_error`` runs an edit and reports a
    refused one (the widget's notification guard)."""

    def __init__(self, context: PluginContext, on_error: Callable):
        super().__init__("Classes")
        self.context = context
        self.on_error = on_error
        layout = QVBoxLayout(self)
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.setToolTip("the model's classes (label values); double-click to rename")
        layout.addWidget(self.list)
        row = QHBoxLayout()
        self.add_button = QPushButton("Add…")
        self.add_button.setToolTip("a new class: paint it, then Fine-tune to teach the model")
        self.rename_button = QPushButton("Rename…")
        self.colour_button = QPushButton("Colour…")
        for button in (self.add_button, self.rename_button, self.colour_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.add_button.clicked.connect(lambda: self.on_error(self._ask_add))
        self.rename_button.clicked.connect(lambda: self.on_error(self._ask_rename))
        self.colour_button.clicked.connect(lambda: self.on_error(self._ask_colour))
        self.list.itemDoubleClicked.connect(lambda _item: self.on_error(self._ask_rename))
        self.refresh()

    # --- edits (also the API of tests and scripts) ----------------------------------
    def add_class(self, name: str, colour: Any = None) -> int:
        """Add a class to the model (a new version); returns its label value."""
        from napari_lightm.engine.classes import add_class

        return self._edit(lambda seg: add_class(seg, name, colour))

    def rename_class(self, index: int, name: str) -> None:
        from napari_lightm.engine.classes import rename_class

        self._edit(lambda seg: rename_class(seg, index, name))

    def set_colour(self, index: int, colour: Any) -> None:
        from napari_lightm.engine.classes import set_class_colour

        self._edit(lambda seg: set_class_colour(seg, index, colour))

    def _edit(self, change: Callable) -> Any:
        """Apply ``change`` to a copy of the model, save it as a new version, use it."""
        panel = self.context.model
        seg = panel.segmenter
        if seg is None:
            raise ValueError(NO_MODEL)
        if self.context.runner.busy:
            raise ValueError("a job is running: change the classes when it has finished")
        edited = seg.copy()
        result = change(edited)  # raises ValueError before anything is saved
        panel.save_version(edited, parent=panel.current_checkpoint())
        panel.set_segmenter(edited)  # model_changed: the list and the layers follow
        return result

    # --- view -----------------------------------------------------------------------
    def selected(self) -> int:
        """The class picked in the list (1 when none is)."""
        row = self.list.currentRow()
        return row if row >= 1 else 1

    def refresh(self) -> None:
        """Show the model's classes and give them to every linked Labels layer."""
        seg = self.context.model.segmenter
        row = self.list.currentRow()
        self.list.clear()
        for button in (self.add_button, self.rename_button, self.colour_button):
            button.setEnabled(seg is not None)
        if seg is None:
            return
        for k, name in enumerate(seg.class_names):
            item = QListWidgetItem(f"{k}  {name}")
            colour = seg.class_colours[k]
            if colour:
                swatch = QPixmap(12, 12)
                swatch.fill(QColor(colour))
                item.setIcon(QIcon(swatch))
            self.list.addItem(item)
        self.list.setCurrentRow(min(max(row, 1), seg.n_classes - 1))
        self.apply_to_layers()

    def apply_to_layers(self) -> None:
        seg = self.context.model.segmenter
        if seg is None:
            return
        for image in self.context.images_with_labels():
            labels = find_labels(self.context.viewer, image)
            if labels is not None:
                show_classes(labels, seg.class_names, seg.class_colours)

    # --- dialogs --------------------------------------------------------------------
    def _ask_add(self) -> None:
        name, ok = QInputDialog.getText(self, "Add a class", "name of the new class:")
        if ok and name.strip():
            index = self.add_class(name)
            self.list.setCurrentRow(index)

    def _ask_rename(self) -> None:
        seg = self.context.model.segmenter
        if seg is None:
            raise ValueError(NO_MODEL)
        index = self.selected()
        name, ok = QInputDialog.getText(
            self, "Rename a class", f"new name of class {index}:", text=seg.class_names[index]
        )
        if ok:
            self.rename_class(index, name)

    def _ask_colour(self) -> None:
        seg = self.context.model.segmenter
        if seg is None:
            raise ValueError(NO_MODEL)
        index = self.selected()
        colour = QColorDialog.getColor(QColor(seg.class_colours[index] or "#ffffff"), self)
        if colour.isValid():
            self.set_colour(index, colour.name())


__all__ = ["ClassesPanel", "show_classes"]
