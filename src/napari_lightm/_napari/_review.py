"""Labels layers linked to images, undoable model writes, and the annotation truth.

The state itself (reviewed flags, marked voxels, undo steps) is Qt-free, in
:mod:`~napari_lightm._napari.annotation`; this module links it to napari layers:
which Labels layer belongs to which image (by the image layer's identity), the
:class:`ReviewTracker` that follows the user's paint and napari's undo/redo and writes
the model's predictions as single undo steps that never change truth, and the
:class:`ReviewStrip` that shows the reviewed slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QRectF, Qt, Signal
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QWidget

from napari_lightm._napari.annotation import (
    IMAGE_ID_KEY,
    IMAGE_KEY,
    MARKED_KEY,
    REVIEWED_KEY,
    Annotation,
    ShapeMismatchError,
    TruthHistory,
    changed_voxels,
    flat_indices,
    full_region,
    labels_dtype,
    links_to,
    n_slices,
    region_indices,
)

__all__ = [
    "IMAGE_ID_KEY",
    "IMAGE_KEY",
    "MARKED_KEY",
    "REVIEWED_KEY",
    "ReviewStrip",
    "ReviewTracker",
    "ShapeMismatchError",
    "annotation",
    "ensure_labels",
    "find_labels",
    "full_region",
    "image_id",
    "labels_dtype",
    "n_slices",
    "reviewed_mask",
    "reviewed_slices",
]


def image_id(layer) -> str:
    """The identity an image layer is linked by (napari's per-layer ``unique_id``)."""
    return str(layer.unique_id)


def find_labels(viewer, image_layer):
    """The Labels layer linked to ``image_layer``, or None.

    The link is the image layer's identity, so renaming or reordering either layer
    keeps it. A Labels layer linked by name only (``metadata["lightm_image"]``), or to
    an image that is no longer open, is adopted when it names this image and has its
    shape (a reopened file finds its labels again).
    """
    from napari.layers import Image, Labels

    uid = image_id(image_layer)
    open_ids = {image_id(layer) for layer in viewer.layers if isinstance(layer, Image)}
    by_name = None
    for layer in viewer.layers:
        if not isinstance(layer, Labels):
            continue
        how = links_to(
            layer.metadata,
            layer.data.shape,
            uid,
            image_layer.name,
            image_layer.data.shape,
            open_ids,
        )
        if how == "id":
            layer.metadata[IMAGE_KEY] = image_layer.name
            return layer
        if how == "name" and by_name is None:
            by_name = layer
    if by_name is not None:
        by_name.metadata[IMAGE_ID_KEY] = uid
    return by_name


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
    metadata = {
        IMAGE_KEY: image_layer.name,
        IMAGE_ID_KEY: image_id(image_layer),
        REVIEWED_KEY: np.zeros(n_slices(shape), bool),
    }
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


def annotation(labels_layer) -> Annotation:
    """The annotation state of ``labels_layer`` as stored (see ``ReviewTracker.annotation``
    for the state with napari's latest undo/redo applied)."""
    return Annotation(labels_layer.metadata, labels_layer.data.shape)


def reviewed_slices(labels_layer) -> np.ndarray:
    """Bool ``[n_slices]`` flags of ``labels_layer`` (created lazily for foreign layers)."""
    return annotation(labels_layer).reviewed


def reviewed_mask(labels_layer) -> np.ndarray:
    """Voxel-wise bool mask of the reviewed slices, shape of the labels."""
    return annotation(labels_layer).reviewed_voxels()


def _key(layer) -> Hashable:
    return layer.unique_id if hasattr(layer, "unique_id") else id(layer)


def _stacks(layer):
    """napari's (undo, redo) stacks of a Labels layer, or None if this napari has none.

    napari has no public view of a Labels history (undo/redo emit no ``paint`` event,
    napari 0.9). Plugins get layers through proxies that warn on private attributes,
    so the layer is unwrapped first; without the stacks, marks are simply kept.
    """
    layer = getattr(layer, "__wrapped__", layer)
    undo = getattr(layer, "_undo_history", None)
    redo = getattr(layer, "_redo_history", None)
    return None if undo is None or redo is None else (undo, redo)


@dataclass
class _Tracked:
    layer: object
    callbacks: list = field(default_factory=list)  # (emitter, callback) pairs
    history: TruthHistory = field(default_factory=TruthHistory)


class ReviewTracker:
    """Keeps each tracked Labels layer's truth in step with its edits and undo/redo, and
    performs the model's undoable writes, which never change truth voxels.

    What a user's paint changed becomes marked (truth), one undo step at a time; undo
    and redo take those marks back and restore them. napari emits
    ``Labels.events.paint`` for every new history item, our own ``data_setitem``
    writes included: a write announces what it marks (usually nothing) in
    ``_pending``, so its item is not taken for a paint.
    """

    def __init__(self, on_change=None):
        self._tracked: dict[Hashable, _Tracked] = {}
        self._pending: dict[Hashable, np.ndarray] = {}
        self.on_change = on_change  # called with the layer after its truth changes

    def track(self, labels_layer) -> None:
        """Follow painting and undo/redo on ``labels_layer`` (idempotent)."""
        key = _key(labels_layer)
        if key in self._tracked:
            return
        annotation(labels_layer).reviewed  # noqa: B018 - creates the flags of foreign layers
        tracked = _Tracked(labels_layer)

        def _on_paint(event, layer=labels_layer, key=key):
            self._on_history_item(layer, key, event.value)

        def _on_set_data(event=None, layer=labels_layer):
            # undo / redo refresh the layer (and so does much else: syncing is cheap)
            if self.sync(layer) and self.on_change is not None:
                self.on_change(layer)

        for emitter, callback in (
            (labels_layer.events.paint, _on_paint),
            (labels_layer.events.set_data, _on_set_data),
        ):
            emitter.connect(callback)
            tracked.callbacks.append((emitter, callback))
        self._tracked[key] = tracked

    def untrack_all(self) -> None:
        for tracked in self._tracked.values():
            for emitter, callback in tracked.callbacks:
                try:
                    emitter.disconnect(callback)
                except (RuntimeError, TypeError, ValueError):
                    pass
        self._tracked.clear()

    def _on_history_item(self, layer, key, item) -> None:
        added = self._pending.pop(key, None)
        tracked = self._tracked.get(key)
        ann = annotation(layer)
        stacks = _stacks(layer)
        if tracked is None or stacks is None:  # no undo history to follow: marks stay
            flat = ann.unmarked(changed_voxels(item, ann.shape) if added is None else added)
            ann.set_marked(flat)
            n_marked = flat.size
        else:
            n_marked = tracked.history.pushed(ann, item, *stacks, added=added)
        if n_marked and self.on_change is not None:
            self.on_change(layer)

    def sync(self, labels_layer) -> bool:
        """Apply napari's undo/redo since the last sync to the marked voxels; True if
        that changed any."""
        tracked = self._tracked.get(_key(labels_layer))
        stacks = _stacks(labels_layer)
        if tracked is None or stacks is None:
            return False
        return tracked.history.sync(annotation(labels_layer), *stacks)

    def annotation(self, labels_layer) -> Annotation:
        """The annotation state of ``labels_layer``, up to date with undo/redo."""
        self.sync(labels_layer)
        return annotation(labels_layer)

    def truth(self, labels_layer, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Bool truth mask over ``region``: reviewed slices OR marked voxels."""
        return self.annotation(labels_layer).truth(region)

    def mark(self, labels_layer, slices: Iterable[int], value: bool = True) -> None:
        """Mark ``slices`` reviewed (or not): each becomes truth as a whole."""
        if annotation(labels_layer).set_reviewed(slices, value) and self.on_change is not None:
            self.on_change(labels_layer)

    def set_marked_mask(self, labels_layer, mask: np.ndarray | None) -> None:
        """Replace the marked voxels (a restored session); earlier undo steps forget theirs."""
        tracked = self._tracked.get(_key(labels_layer))
        if tracked is not None:
            tracked.history.forget()
        annotation(labels_layer).set_marked_mask(mask)

    def write(
        self,
        labels_layer,
        values: np.ndarray,
        region: tuple[slice, ...] | None = None,
        where: np.ndarray | None = None,
        protect_reviewed: bool = True,
        truth: np.ndarray | None = None,
    ) -> int:
        """Write ``values`` into ``region`` of the labels as ONE undo step; returns voxels changed.

        Args:
            labels_layer: napari Labels layer.
            values: int array with the region's shape.
            region: tuple of slices (None = whole array).
            where: optional bool mask (region shape): only these voxels are written.
            protect_reviewed: leave every truth voxel (reviewed slices, painted voxels,
                click discs) as it is. Every model write does; False only replaces
                labels wholesale (a session being reopened, the demo's reference).
            truth: optional bool mask (region shape) of voxels this write makes truth
                (a click's disc): written too, and unmarked again when it is undone.
        """
        self.track(labels_layer)
        ann = self.annotation(labels_layer)
        data = labels_layer.data
        region = full_region(data.shape) if region is None else tuple(region)
        old = np.asarray(data[region])
        if old.shape != values.shape:
            raise ShapeMismatchError(f"prediction shape {values.shape} != region {old.shape}")
        values = values.astype(data.dtype, copy=False)
        target = np.ones(old.shape, bool) if where is None else np.array(where, bool)
        if truth is not None:
            truth = np.asarray(truth, bool)
            target |= truth
        if protect_reviewed:
            kept = ann.truth(region)
            target &= ~kept
            if truth is not None:
                truth = truth & ~kept
        added = (
            ann.unmarked(flat_indices(truth, region, data.shape))
            if truth is not None
            else np.zeros(0, np.intp)
        )
        change = target & (old != values)
        indices = region_indices(change, region, data.shape)  # compact: napari keeps them
        if indices[0].size == 0:
            ann.set_marked(added)  # no data change, so no undo step: the marks just stay
            return 0
        key = _key(labels_layer)
        self._pending[key] = added
        try:
            with labels_layer.block_history():
                labels_layer.data_setitem(indices, values[change])
        finally:
            left = self._pending.pop(key, None)
            if left is not None:  # no history item was announced: keep the marks anyway
                ann.set_marked(left)
        return int(indices[0].size)


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
