"""Labels layers linked to images, undoable model writes, and the *reviewed* slices.

A *reviewed* slice (axis 0 of a 3D image; the whole image for a 2D one) is one the
user has checked or corrected: it is fully labelled (0 = background there), it
supervises fine-tuning, and model writes never overwrite it. The per-slice flags
live in the Labels layer's ``metadata["lightm_reviewed"]`` (bool ``[n_slices]``) so
they travel with the layer; the linked image's name is in ``metadata["lightm_image"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QWidget

REVIEWED_KEY = "lightm_reviewed"
IMAGE_KEY = "lightm_image"


class ShapeMismatchError(ValueError):
    """A labels array or mask whose shape does not match its image."""


def labels_dtype(n_classes: int) -> np.dtype:
    """uint8 up to 256 classes, uint16 beyond (napari semantic-labels convention)."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


def n_slices(shape: tuple[int, ...]) -> int:
    """Reviewable units of an image: axis-0 slices of a volume, 1 for a 2D image."""
    return shape[0] if len(shape) == 3 else 1


def find_labels(viewer, image_layer):
    """The Labels layer linked to ``image_layer`` (by name), or None."""
    for layer in viewer.layers:
        if _is_labels(layer) and layer.metadata.get(IMAGE_KEY) == image_layer.name:
            return layer
    return None


def _is_labels(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def ensure_labels(viewer, image_layer, n_classes: int, data: np.ndarray | None = None):
    """Return the Labels layer linked to ``image_layer``, creating an empty one if needed.

    The new layer copies the image's ``scale``, ``translate``, ``affine``, ``units``
    and ``metadata["geometry"]`` (the writer saves labels with that header).
    """
    layer = find_labels(viewer, image_layer)
    if layer is not None:
        return layer
    shape = tuple(image_layer.data.shape)
    if data is None:
        data = np.zeros(shape, dtype=labels_dtype(n_classes))
    elif tuple(data.shape) != shape:
        raise ShapeMismatchError(f"labels shape {data.shape} != image shape {shape}")
    metadata = {IMAGE_KEY: image_layer.name, REVIEWED_KEY: np.zeros(n_slices(shape), bool)}
    if "geometry" in image_layer.metadata:
        metadata["geometry"] = dict(image_layer.metadata["geometry"])
    return viewer.add_labels(
        data,
        name=f"{image_layer.name} labels",
        scale=image_layer.scale,
        translate=image_layer.translate,
        affine=image_layer.affine,
        units=image_layer.units,
        metadata=metadata,
        opacity=0.5,
    )


def reviewed_slices(labels_layer) -> np.ndarray:
    """Bool ``[n_slices]`` flags of ``labels_layer`` (created lazily for foreign layers)."""
    flags = labels_layer.metadata.get(REVIEWED_KEY)
    n = n_slices(labels_layer.data.shape)
    if flags is None or len(flags) != n:
        flags = np.zeros(n, bool)
        labels_layer.metadata[REVIEWED_KEY] = flags
    return flags


def reviewed_mask(labels_layer) -> np.ndarray:
    """Voxel-wise bool mask of the reviewed slices, shape of the labels."""
    flags = reviewed_slices(labels_layer)
    shape = labels_layer.data.shape
    if len(shape) == 3:
        return np.broadcast_to(flags[:, None, None], shape).copy()
    return np.full(shape, bool(flags[0]))


def protected(labels_layer, region: tuple[slice, ...]) -> np.ndarray:
    """Bool mask over ``region`` that is True where the slice is reviewed."""
    flags = reviewed_slices(labels_layer)
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(region, labels_layer.data.shape))
    if len(shape) == 3:
        sub = flags[region[0]]
        return np.broadcast_to(sub[:, None, None], shape)
    return np.full(shape, bool(flags[0]))


def full_region(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


class ReviewTracker:
    """Marks painted slices reviewed and performs the model's undoable writes.

    Napari emits ``Labels.events.paint`` for *every* history item, our own
    ``data_setitem`` writes included; those are told apart by ``_model_writing``.
    """

    def __init__(self, on_change=None):
        self._model_writing = False
        self._connected: dict[int, object] = {}
        self.on_change = on_change  # called with the layer after flags change

    def track(self, labels_layer) -> None:
        """Listen to user painting on ``labels_layer`` (idempotent)."""
        key = labels_layer.unique_id if hasattr(labels_layer, "unique_id") else id(labels_layer)
        if key in self._connected:
            return
        reviewed_slices(labels_layer)

        def _on_paint(event, layer=labels_layer):
            if not self._model_writing:
                self.mark(layer, touched_slices(event.value, layer.data.ndim))

        labels_layer.events.paint.connect(_on_paint)
        self._connected[key] = (labels_layer, _on_paint)

    def untrack_all(self) -> None:
        for layer, callback in self._connected.values():
            try:
                layer.events.paint.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._connected.clear()

    def mark(self, labels_layer, slices: Iterable[int], value: bool = True) -> None:
        flags = reviewed_slices(labels_layer)
        idx = [int(s) for s in slices if 0 <= int(s) < len(flags)]
        if not idx:
            return
        flags[idx] = value
        if self.on_change is not None:
            self.on_change(labels_layer)

    @contextmanager
    def model_write(self) -> Iterator[None]:
        """Writes inside are the model's: no slice becomes reviewed through them."""
        self._model_writing = True
        try:
            yield
        finally:
            self._model_writing = False

    def write(
        self,
        labels_layer,
        values: np.ndarray,
        region: tuple[slice, ...] | None = None,
        where: np.ndarray | None = None,
        protect_reviewed: bool = True,
    ) -> int:
        """Write ``values`` into ``region`` of the labels as ONE undo step; returns voxels changed.

        Args:
            labels_layer: napari Labels layer.
            values: int array with the region's shape.
            region: tuple of slices (None = whole array).
            where: optional bool mask (region shape): only these voxels are written.
            protect_reviewed: skip reviewed slices (every model prediction does).
        """
        data = labels_layer.data
        region = full_region(data.shape) if region is None else region
        old = np.asarray(data[region])
        if old.shape != values.shape:
            raise ShapeMismatchError(f"prediction shape {values.shape} != region {old.shape}")
        values = values.astype(data.dtype, copy=False)
        change = old != values
        if where is not None:
            change &= where
        if protect_reviewed:
            change &= ~protected(labels_layer, region)
        idx = np.nonzero(change)
        if idx[0].size == 0:
            return 0
        indices = tuple(i + s.start for i, s in zip(idx, region))
        with self.model_write(), labels_layer.block_history():
            labels_layer.data_setitem(indices, values[change])
        return int(idx[0].size)


def touched_slices(history_item, ndim: int) -> set[int]:
    """Axis-0 slices touched by one napari Labels history item (list of atoms)."""
    if ndim != 3:
        return {0}
    out: set[int] = set()
    for atom in history_item or ():
        key = getattr(atom, "slice_key", None)
        if key is not None:  # mask-based atom: bounding box of the edit
            start, stop = key[0].start or 0, key[0].stop
            out.update(range(start, stop if stop is not None else start + 1))
        else:  # (indices, old, new) tuple from data_setitem
            out.update(np.unique(np.asarray(atom[0][0])).tolist())
    return out


class ReviewStrip(QWidget):
    """One cell per slice: green when reviewed, white outline on the current one.

    Clicking a cell emits ``slice_clicked(index)`` (the widget moves napari's slider).
    """

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.flags = np.zeros(0, bool)
        self.current = -1
        self.setMinimumHeight(18)
        self.setMaximumHeight(18)
        self.setToolTip("reviewed slices (green); click to go to a slice")

    def set_state(self, flags: np.ndarray, current: int = -1) -> None:
        self.flags = np.asarray(flags, bool).copy()
        self.current = current
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        w, h = self.width(), self.height()
        painter.fillRect(0, 0, w, h, QColor(40, 40, 40))
        n = len(self.flags)
        if n:
            cell = w / n
            for i in np.flatnonzero(self.flags):
                painter.fillRect(QRectF(i * cell, 0, max(cell, 1.0), h), QColor(60, 190, 90))
            if 0 <= self.current < n:
                painter.setPen(QColor(Qt.GlobalColor.white))
                painter.drawRect(QRectF(self.current * cell, 0, max(cell - 1, 1.0), h - 1))
        painter.end()

    def mousePressEvent(self, event) -> None:
        n = len(self.flags)
        if n:
            x = event.position().x() if hasattr(event, "position") else event.x()
            self.slice_clicked.emit(int(min(n - 1, max(0, x * n // max(self.width(), 1)))))
