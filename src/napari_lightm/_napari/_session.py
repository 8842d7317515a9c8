"""Session folders: labels, reviewed slices, image paths and the model, to continue later.

Layout of a session folder::

    session.json          what is below, plus layer names, geometry, model name/version
    labels_00.npy         labels of image 0 (exact dtype)
    reviewed_00.npy       bool [n_slices] reviewed flags of image 0
    image_00.npy          the image itself, only when it has no source file
    model_v003.safetensors  the model version in use (``Segmenter.save``)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari_lightm._napari._widget import LightMWidget

SESSION_FILE = "session.json"
FORMAT = "napari-lightm session"
FORMAT_VERSION = 1


class SessionError(ValueError):
    """A folder that is not a readable napari-lightm session (message names the file)."""


@dataclass
class SessionImage:
    """One image of a session and its annotation state."""

    name: str
    labels: np.ndarray
    reviewed: np.ndarray
    source: str | None = None
    image: np.ndarray | None = None  # kept only when there is no source file
    geometry: dict[str, Any] | None = None
    layer: dict[str, Any] = field(default_factory=dict)  # scale / translate of the layer


@dataclass
class SessionModel:
    name: str
    version: int
    checkpoint: Path


def write_session(
    folder: str | Path, images: list[SessionImage], seg=None, model_name: str = ""
) -> Path:
    """Write a session folder (created if needed); returns the ``session.json`` path.

    ``seg`` (a Segmenter, optional) is saved next to it so the session is self-contained.
    The JSON is written last, through a temporary file, so a crash never leaves a
    session.json that points at missing arrays.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, item in enumerate(images):
        entry: dict[str, Any] = {
            "name": item.name,
            "source": item.source,
            "labels_file": f"labels_{i:02d}.npy",
            "reviewed_file": f"reviewed_{i:02d}.npy",
            "geometry": item.geometry,
            "layer": item.layer,
        }
        np.save(folder / entry["labels_file"], np.asarray(item.labels))
        np.save(folder / entry["reviewed_file"], np.asarray(item.reviewed, bool))
        if item.image is not None and not (item.source and Path(item.source).exists()):
            entry["image_file"] = f"image_{i:02d}.npy"
            np.save(folder / entry["image_file"], np.asarray(item.image))
        entries.append(entry)
    model = None
    if seg is not None:
        checkpoint = folder / f"model_v{int(seg.version):03d}.safetensors"
        saved = Path(seg.save(checkpoint) or checkpoint)
        for old in folder.glob("model_v*"):  # one model per session: drop older versions
            if old.name != saved.name and old.is_file():
                old.unlink()
        model = {"name": model_name, "version": int(seg.version), "checkpoint": saved.name}
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "images": entries,
        "model": model,
    }
    tmp = folder / (SESSION_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default))
    tmp.replace(folder / SESSION_FILE)
    return folder / SESSION_FILE


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_session(folder: str | Path) -> tuple[list[SessionImage], SessionModel | None]:
    """Read a session folder written by :func:`write_session`."""
    folder = Path(folder)
    path = folder / SESSION_FILE
    if not path.is_file():
        raise SessionError(f"{folder} is not a napari-lightm session (no {SESSION_FILE})")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path} is not valid JSON: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise SessionError(f"{path} is not a napari-lightm session file")
    images = []
    for entry in doc.get("images", []):
        try:
            labels = np.load(folder / entry["labels_file"])
            reviewed = np.load(folder / entry["reviewed_file"]).astype(bool)
            image = np.load(folder / entry["image_file"]) if entry.get("image_file") else None
        except (OSError, KeyError, ValueError) as exc:
            raise SessionError(
                f"session {folder}: cannot read image entry {entry.get('name')!r}: {exc}"
            ) from exc
        images.append(
            SessionImage(
                entry["name"],
                labels,
                reviewed,
                entry.get("source"),
                image,
                entry.get("geometry"),
                entry.get("layer") or {},
            )
        )
    model = doc.get("model")
    if model:
        model = SessionModel(
            model.get("name", ""), int(model["version"]), folder / model["checkpoint"]
        )
    return images, model


# --- viewer side (main thread) --------------------------------------------------------
def collect(widget: LightMWidget) -> list[SessionImage]:
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


def save(widget: LightMWidget, folder: str | Path) -> Path:
    """Save the widget's session into ``folder``; returns ``session.json``."""
    model = widget.model
    return write_session(folder, collect(widget), model.segmenter, model.name)


def open_session(widget: LightMWidget, folder: str | Path) -> list:
    """Open a session into the viewer: images (reused when open), labels, reviewed flags
    and the model. Returns the Labels layers."""
    from napari_lightm._napari._review import REVIEWED_KEY, ensure_labels, find_labels

    images, model = read_session(folder)
    viewer = widget.viewer
    if model is not None and model.checkpoint.exists():
        widget.model.load_path(model.checkpoint)
        if model.name:
            widget.model.name = model.name
    n_classes = len(widget.model.segmenter.class_names) if widget.model.segmenter else 256
    out = []
    for item in images:
        image_layer = _find_or_open_image(viewer, item)
        labels = find_labels(viewer, image_layer)
        if labels is None:
            labels = ensure_labels(viewer, image_layer, n_classes, data=item.labels.copy())
        else:  # replace the open labels as one undoable step (nothing lost)
            widget.tracker.track(labels)
            widget.tracker.write(labels, item.labels, protect_reviewed=False)
        labels.metadata[REVIEWED_KEY] = item.reviewed.copy()
        widget.tracker.track(labels)
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
            kwargs = Geometry.from_dict(item.geometry).layer_kwargs()
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
