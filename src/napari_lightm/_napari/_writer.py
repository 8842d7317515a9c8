"""npe2 writer: a Labels layer to NIfTI / NRRD / MHA / PNG with its source image's geometry,
or to DICOM-SEG (``.dcm``) referencing the DICOM series it was made on."""

from __future__ import annotations

from typing import Any


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns the written path (npe2 single-layer writer).

    The geometry comes from ``attributes["metadata"]["geometry"]`` (a
    ``Geometry.to_dict()``, copied from the source image by the reader or the widget);
    a layer without it is written with the geometry its own scale/translate/affine give.
    A DICOM-SEG takes its segment names from ``metadata["class_names"]`` (index 0 the
    background), its colours from the layer's colormap, and is SEMIAUTOMATIC when a
    person marked or reviewed part of the labels, else AUTOMATIC.

    Raises:
        napari_lightm.io.LabelWriteError: unknown suffix, shape/geometry mismatch, values
            that are not class indices; for ``.dcm`` an image not from DICOM (with what
            to use instead).
    """
    import numpy as np

    from napari_lightm.io import write_labels as write
    from napari_lightm.io.readers import suffix_of

    geometry = layer_geometry(attributes)
    labels = np.asarray(data)
    options: dict[str, Any] = {}
    if suffix_of(path) == ".dcm":
        metadata = attributes.get("metadata") or {}
        names = metadata.get("class_names")
        options = {
            "class_names": list(names) if names else None,
            "colours": layer_colours(attributes, labels, names),
            "algorithm_type": algorithm_type(metadata, labels.shape),
        }
    written = write(path, labels, geometry, **options)
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


def layer_colours(attributes: dict[str, Any], labels: Any, names: Any) -> list[Any] | None:
    """RGB (0..1) of classes 0..n as the layer shows them; None when the colormap cannot
    say (the DICOM-SEG then uses its own palette)."""
    import numpy as np

    colormap = attributes.get("colormap")
    top = len(names) - 1 if names else int(labels.max()) if labels.size else 0
    if colormap is None or top < 1 or top > 65535:
        return None
    try:
        dtype = np.uint8 if top <= 255 else np.uint16
        rgba = np.asarray(colormap.map(np.arange(top + 1, dtype=dtype)), float)
    except Exception:  # a colormap of another kind or version: colours are optional
        return None
    if rgba.shape != (top + 1, 4):
        return None
    return [tuple(row[:3]) for row in rgba]


def algorithm_type(metadata: dict[str, Any], shape: tuple[int, ...]) -> str:
    """SEMIAUTOMATIC when a person asserted part of the labels (painted voxels, clicks,
    reviewed slices), else AUTOMATIC (the model's output as it is)."""
    from napari_lightm._napari.annotation import Annotation

    try:
        return "SEMIAUTOMATIC" if Annotation(dict(metadata), shape).has_truth() else "AUTOMATIC"
    except (ValueError, TypeError, AttributeError):  # tampered annotation metadata
        return "AUTOMATIC"
