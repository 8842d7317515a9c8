"""Sessions in the viewer: collect the widget's state, save it, open a saved one.

The folder format (and its crash-safe writes) is :mod:`napari_lightm.io.session`; this
module only moves state between that format and napari layers, on the main thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_lightm.io.session import SessionError, SessionImage, read_session, write_session

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext


# --- viewer side (main thread) --------------------------------------------------------
def collect(widget: PluginContext) -> list[SessionImage]:
    """The session state of every image that has a linked Labels layer."""
    from napari_lightm._napari._review import find_labels, reviewed_slices

    out = []
    for layer in widget.images_with_labels():
        labels = find_labels(widget.viewer, layer)
        geometry = layer.metadata.get("geometry")
        source = (geometry or {}).get("source") or _layer_source(layer)
        out.append(
            SessionImage(
                name=layer.name,
                labels=np.array(labels.data, copy=True),
                reviewed=reviewed_slices(labels).copy(),
                marked=widget.tracker.annotation(labels).marked(),
                source=source,
                image=np.asarray(layer.data),
                geometry=geometry,
                layer={
                    "scale": list(map(float, layer.scale)),
                    "translate": list(map(float, layer.translate)),
                },
            )
        )
    return out


def _layer_source(layer) -> str | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def save(widget: PluginContext, folder: str | Path) -> Path:
    """Save the widget's session into ``folder``; returns ``session.json``."""
    model = widget.model
    return write_session(folder, collect(widget), model.segmenter, model.name)


def open_session(widget: PluginContext, folder: str | Path) -> list:
    """Open a session into the viewer: images (reused when open), labels, reviewed flags
    and the model. Returns the Labels layers.

    Everything that can fail (the files, the checkpoint, the images) is read before the
    model or any open Labels layer changes, so a bad session changes nothing.
    """
    from napari_lightm._napari._review import REVIEWED_KEY, ensure_labels, find_labels

    images, model = read_session(folder)
    viewer = widget.viewer
    seg = None
    if model is not None:
        from napari_lightm.engine import Segmenter

        seg = Segmenter.load(model.checkpoint, device=widget.model.device_choice())
    image_layers = [_find_or_open_image(viewer, item) for item in images]
    if seg is not None:
        widget.model.set_segmenter(seg, name=model.name or "model", path=model.checkpoint)
    n_classes = len(widget.model.segmenter.class_names) if widget.model.segmenter else 256
    out = []
    for item, image_layer in zip(images, image_layers):
        labels = find_labels(viewer, image_layer)
        if labels is None:
            labels = ensure_labels(viewer, image_layer, n_classes, data=item.labels.copy())
        else:  # replace the open labels as one undoable step (nothing lost)
            widget.tracker.track(labels)
            widget.tracker.write(labels, item.labels, protect_reviewed=False)
        labels.metadata[REVIEWED_KEY] = item.reviewed.copy()
        widget.tracker.track(labels)
        widget.tracker.set_marked_mask(labels, item.marked)
        labels.refresh()
        out.append(labels)
    widget.session_dir = Path(folder)
    widget.refresh_review()
    return out


def _find_or_open_image(viewer, item: SessionImage):
    from napari.layers import Image

    from napari_lightm.io.geometry import Geometry

    for layer in viewer.layers:
        if isinstance(layer, Image) and layer.name == item.name:
            if tuple(layer.data.shape) == tuple(item.labels.shape):
                return layer
    if item.image is not None:
        kwargs: dict[str, Any] = dict(item.layer)
        if item.geometry:
            try:
                kwargs = Geometry.from_dict(item.geometry).layer_kwargs()
            except (KeyError, TypeError, ValueError) as exc:
                raise SessionError(
                    f"image {item.name!r} of the session has unusable geometry: {exc}"
                ) from exc
        return viewer.add_image(item.image, name=item.name, **kwargs)
    if item.source and Path(item.source).exists():
        layers = viewer.open(item.source, plugin="napari-lightm")
        images = [layer for layer in layers if isinstance(layer, Image)]
        if images:
            images[0].name = item.name
            return images[0]
    raise SessionError(
        f"image {item.name!r} of the session is not open and its file "
        f"{item.source!r} cannot be found"
    )
