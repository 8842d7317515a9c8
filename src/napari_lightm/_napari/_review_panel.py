"""The "Reviewed slices" box: which slices of the picked image are reviewed (a strip to
click through), what is painted or clicked on the current one, "Mark reviewed", and the
volume in ml of each class of its labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from napari_lightm._napari._review import ReviewStrip, find_labels

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext


class ReviewPanel(QGroupBox):
    """Shows the review state of ``context``'s picked image; ``mark_button`` is the
    widget's "Mark reviewed" button (bound to its key), placed at the top."""

    def __init__(self, context: PluginContext, mark_button: QPushButton):
        super().__init__("Reviewed slices")
        self.context = context
        layout = QVBoxLayout(self)
        self.mark_button = mark_button
        layout.addWidget(mark_button)
        self.strip = ReviewStrip()
        layout.addWidget(self.strip)
        self.summary = QLabel("no labels yet")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        row = QHBoxLayout()
        self.volumes_button = QPushButton("Volumes")
        self.volumes_button.setToolTip("volume (ml) of each class in the picked image's labels")
        self.volumes_button.clicked.connect(self.show_volumes)
        self.volumes_label = QLabel("")
        self.volumes_label.setWordWrap(True)
        row.addWidget(self.volumes_button)
        row.addWidget(self.volumes_label, 1)
        layout.addLayout(row)
        self.strip.slice_clicked.connect(self.go_to_slice)

    def _labels(self):
        image = self.context.current_image()
        return image, (find_labels(self.context.viewer, image) if image is not None else None)

    def current_slice(self) -> int:
        """The slice of the picked image the viewer shows (0 for a 2D image)."""
        from napari_lightm._napari._segment import current_index

        image = self.context.current_image()
        if image is None or image.data.ndim != 3:
            return 0
        return current_index(self.context.viewer, image)[0]

    def refresh(self) -> None:
        """Show the reviewed slices, and the painted / clicked voxels of the current one."""
        _, labels = self._labels()
        if labels is None:
            self.strip.set_state(np.zeros(0, bool))
            self.summary.setText("no labels yet: segment, click or paint")
            return
        state = self.context.tracker.annotation(labels)
        flags = state.reviewed
        current = self.current_slice()
        self.strip.set_state(flags, current)
        done = np.flatnonzero(flags).tolist()
        shown = ", ".join(map(str, done[:12])) + (" …" if len(done) > 12 else "")
        marked = state.marked()
        here = 0
        if marked is not None:
            here = int(np.count_nonzero(marked[current] if marked.ndim == 3 else marked))
        self.summary.setText(
            f"{len(done)} / {len(flags)} slices reviewed"
            + (f": {shown}" if done else "")
            + ("  (current slice reviewed)" if flags[current] else "")
            + (f"; {here} painted/clicked voxels on this slice" if here else "")
        )

    def show_volumes(self) -> str:
        """Show (and return) the volume in ml of each class in the picked image's labels,
        from the image's voxel size."""
        from napari_lightm._napari._segment import layer_geometry
        from napari_lightm.engine.metrics import class_volumes_ml

        image, labels = self._labels()
        geometry = layer_geometry(image) if image is not None else None
        if labels is None:
            text = "no labels yet"
        elif labels.data.ndim != 3 or geometry.units == "pixel":
            text = "volumes need a 3D image with a known voxel size"
        else:
            data = np.asarray(labels.data)
            names = list(labels.metadata.get("class_names") or [])
            seg = self.context.model.segmenter
            if not names and seg is not None:
                names = list(seg.class_names)
            n = max(len(names), int(data.max(initial=0)) + 1)
            names += [f"class {i}" for i in range(len(names), n)]
            ml = class_volumes_ml(data, n, geometry.scale)
            text = " · ".join(
                f"{names[k]} {ml[k]:.1f} ml" if ml[k] >= 10 else f"{names[k]} {ml[k]:.3g} ml"
                for k in range(1, n)
                if ml[k] > 0
            )
            text = text or "no class in the labels yet"
        self.volumes_label.setText(text)
        return text

    def go_to_slice(self, index: int) -> None:
        """Move the viewer to slice ``index`` of the picked image."""
        image = self.context.current_image()
        if image is None or image.data.ndim != 3:
            return
        world = image.data_to_world([index, 0, 0])
        axis = self.context.viewer.dims.ndim - 3
        self.context.viewer.dims.set_point(axis, float(world[0]))


__all__ = ["ReviewPanel"]
