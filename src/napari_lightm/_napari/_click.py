"""Click-to-segment through a Points layer.

A *positive* click runs the model on a window around the click and adds the
connected component of the predicted class under the click; a *negative* click
removes the connected labelled component under it (no model run). Either way the
click is also truth for fine-tuning: a small disc around it (``annotation.click_disc``)
of the added class, or of background, undone with the click. Clicks never change
truth voxels (painted, clicked or on reviewed slices). Points carry a ``positive``
feature (green / red); :data:`KEYBINDINGS` ``toggle_polarity`` flips it. Clicks are
mapped to image indices with ``world_to_data``, never slider indices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_lightm._napari._review import ensure_labels, find_labels, full_region
from napari_lightm._napari._segment import (
    Job,
    SegmentInputError,
    check_model,
    image_array,
    layer_geometry,
    predict_jobs,
)
from napari_lightm._napari.annotation import click_disc

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext

CLICKS_LAYER = "LightM clicks"
#: window the model sees around a click: (y, x) for 2D models, (z, y, x) for 3D ones
CLICK_WINDOW_2D = (128, 128)
CLICK_WINDOW_3D = (32, 96, 96)
POSITIVE_COLOR, NEGATIVE_COLOR = "lime", "red"


def click_index(image_layer, world_point) -> tuple[int, ...]:
    """Image data index under a world-coordinate point; SegmentInputError outside the image."""
    data = np.asarray(image_layer.world_to_data(world_point), float)
    shape = image_layer.data.shape
    index = tuple(int(round(c)) for c in data[-len(shape) :])
    if any(i < 0 or i >= n for i, n in zip(index, shape)):
        raise SegmentInputError(f"the click {index} is outside the image {tuple(shape)}")
    return index


def window(center: int, size: int, n: int) -> slice:
    start = max(0, min(center - size // 2, n - size))
    return slice(start, min(n, start + size))


def click_roi(
    shape: tuple[int, ...], index: tuple[int, ...], spatial_dims: int
) -> tuple[slice, ...]:
    """The region the model sees for a click at ``index`` in an image of ``shape``."""
    if len(shape) == 3 and spatial_dims == 2:
        z = index[0]
        return (slice(z, z + 1),) + tuple(
            window(c, s, n) for c, s, n in zip(index[1:], CLICK_WINDOW_2D, shape[1:])
        )
    sizes = CLICK_WINDOW_3D if len(shape) == 3 else CLICK_WINDOW_2D
    return tuple(window(c, s, n) for c, s, n in zip(index, sizes, shape))


def component_at(mask: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """The connected component (face connectivity) of ``mask`` containing ``index``."""
    from scipy import ndimage

    if not mask[index]:
        return np.zeros_like(mask, bool)
    components, _ = ndimage.label(mask)
    return components == components[index]


def relative(index: tuple[int, ...], region: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(i - s.start for i, s in zip(index, region))


def add_component(widget: PluginContext, image_layer, index, region, prediction) -> int:
    """Positive click result: add the predicted component under ``index`` and make the
    click's disc truth of that class, as one undo step; returns voxels changed."""
    from napari.utils.notifications import show_info

    rel = relative(index, region)
    cls = int(prediction[rel])
    if cls == 0:
        show_info("the model predicts background under the click: nothing added")
        return 0
    labels = ensure_labels(widget.viewer, image_layer, len(widget.model.segmenter.class_names))
    labels.metadata["class_names"] = list(widget.model.segmenter.class_names)
    comp = component_at(prediction == cls, rel)
    disc = click_disc(labels.data.shape, index, region)
    values = np.full(prediction.shape, cls, dtype=labels.data.dtype)
    changed = widget.tracker.write(labels, values, region, where=comp, truth=disc)
    labels.refresh()
    return changed


def remove_component(widget: PluginContext, image_layer, index) -> int:
    """Negative click: set the labelled component under ``index`` to 0 and make the
    click's disc background truth, as one undo step; returns voxels changed."""
    from napari.utils.notifications import show_info

    labels = find_labels(widget.viewer, image_layer)
    if labels is None:
        show_info("no labels yet: nothing removed")
        return 0
    data = np.asarray(labels.data)
    if (
        data.ndim == 3
        and widget.model.segmenter is not None
        and widget.model.segmenter.spatial_dims == 2
    ):
        # a 2D model's objects live slice by slice: remove within the clicked slice
        z = index[0]
        region = (slice(z, z + 1), slice(0, data.shape[1]), slice(0, data.shape[2]))
    else:
        region = full_region(data.shape)
    sub = data[region]
    rel = relative(index, region)
    value = int(sub[rel])
    comp = component_at(sub == value, rel) if value else np.zeros(sub.shape, bool)
    disc = click_disc(data.shape, index, region)
    changed = widget.tracker.write(labels, np.zeros_like(sub), region, where=comp, truth=disc)
    labels.refresh()
    if not value:
        show_info("no label under the click: marked background there for fine-tuning")
    elif not changed:
        show_info("the label under the click is truth (painted or reviewed): erase it instead")
    return changed


class ClickController:
    """Owns the clicks Points layer and turns each added point into an edit."""

    def __init__(self, widget: PluginContext):
        self.widget = widget
        self.positive = True
        self.layer = None
        self.last_changed = 0

    def ensure_layer(self, image_layer):
        """Create (or find) the clicks layer over ``image_layer``; put it in add mode."""
        viewer = self.widget.viewer
        if CLICKS_LAYER in viewer.layers:
            layer = viewer.layers[CLICKS_LAYER]
        else:
            layer = viewer.add_points(
                np.empty((0, image_layer.data.ndim)),
                name=CLICKS_LAYER,
                scale=image_layer.scale,
                translate=image_layer.translate,
                affine=image_layer.affine,
                units=image_layer.units,
                features={"positive": np.empty(0, bool)},
                border_color="white",
                size=max(2.0, 0.02 * max(image_layer.data.shape[-2:])),
            )
        layer.events.data.connect(self._on_points)  # once: napari ignores a repeat
        self.layer = layer
        self.set_positive(self.positive)
        viewer.layers.selection.active = layer
        layer.mode = "add"
        return layer

    def set_positive(self, positive: bool) -> None:
        self.positive = bool(positive)
        if self.layer is not None:
            self.layer.feature_defaults = {"positive": self.positive}
            self.layer.current_face_color = POSITIVE_COLOR if positive else NEGATIVE_COLOR
        self.widget.on_polarity(self.positive)

    def toggle(self) -> None:
        self.set_positive(not self.positive)

    def close(self) -> None:
        """Stop listening to the clicks layer (the widget is going away)."""
        if self.layer is not None:
            try:
                self.layer.events.data.disconnect(self._on_points)
            except (RuntimeError, TypeError, ValueError):
                pass
        self.layer = None

    def _on_points(self, event) -> None:
        if str(getattr(event, "action", "added")).lower().split(".")[-1] != "added":
            return
        indices = sorted(getattr(event, "data_indices", ()) or ())
        layer = self.layer
        for i in indices:
            positive = (
                bool(layer.features["positive"].iloc[i])
                if len(layer.features) > i
                else self.positive
            )
            self.click(layer.data_to_world(layer.data[i]), positive)

    def click(self, world_point, positive: bool) -> bool:
        """Apply one click at ``world_point`` (world coordinates); False on bad input."""
        from napari.utils.notifications import show_error, show_info

        widget = self.widget
        image_layer = widget.current_image()
        try:
            if image_layer is None:
                raise SegmentInputError("open an image first")
            index = click_index(image_layer, world_point)
            if not positive:
                self.last_changed = remove_component(widget, image_layer, index)
                widget.refresh_review()
                return True
            seg = widget.model.segmenter
            image = image_array(image_layer)
            check_model(seg, image, image_layer.name)
        except ValueError as exc:
            show_error(str(exc))
            return False
        if widget.runner.busy:
            show_info(f"busy with '{widget.runner.name}': click ignored")
            return False
        region = click_roi(image.shape, index, seg.spatial_dims)
        job = Job(image_layer, image, layer_geometry(image_layer), region, region)

        def _done(predictions):
            self.last_changed = add_component(widget, image_layer, index, region, predictions[0])
            widget.refresh_review()

        widget.runner.start("click", lambda token: predict_jobs(seg, [job], token), _done)
        return True
