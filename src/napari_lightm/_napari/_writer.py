"""npe2 writer: a Labels layer to NIfTI / NRRD / MHA / PNG with its source image's geometry."""

from __future__ import annotations

from typing import Any


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns the written path (npe2 single-layer writer).

    The geometry comes from ``attributes["metadata"]["geometry"]`` (a
    ``Geometry.to_dict()``, copied from the source image by the reader or the widget);
    a layer without it is written with the geometry its own scale/translate/affine give.

    Raises:
        napari_lightm.io.LabelWriteError: unknown suffix, shape/geometry mismatch, values
            that are not class indices.
    """
    import numpy as np

    from napari_lightm.io import write_labels as write

    geometry = layer_geometry(attributes)
    written = write(path, np.asarray(data), geometry)
    return [str(written)]


def layer_geometry(attributes: dict[str, Any]) -> Any:
    """:class:`~napari_lightm.io.Geometry` of a layer from its metadata or transforms."""
    from napari_lightm.io import Geometry

    stored = (attributes.get("metadata") or {}).get("geometry")
    if stored:
        return Geometry.from_dict(stored)
    scale = attributes.get("scale")
    if scale is None:
        return None
    return Geometry.from_layer(scale, attributes.get("translate"), attributes.get("affine"))
