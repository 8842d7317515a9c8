"""npe2 reader: medical images and DICOM folders as napari Image layers with geometry,
and DICOM-SEG files as Labels layers on the grid of the image they segment.

``get_reader`` only looks at suffixes, DICOM preambles and folder contents (fast, never
raises); the reading itself, and any clear error about a broken file, happens in the
returned function, which napari calls and whose errors it shows as notifications.

A DICOM-SEG stores its frames against the instances of its source series, so the series
is needed to place them: the open image of that series when there is one (the labels are
then linked to it), else the series found in the SEG's folder or the folder above.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]
LayerData = tuple[Any, dict[str, Any], str]

# soft-tissue (abdomen) window, W 400 / L 40, for CT without a window in its header
CT_WINDOW = (-160.0, 240.0)


def get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """Return :func:`read_layers` when every path looks like something we read, else None."""
    try:
        from napari_lightm.io import can_read

        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        if paths and all(can_read(p) for p in paths):
            return read_layers
    except Exception:  # napari must be free to try the next reader, never crash
        return None
    return None


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Read each path into an Image layer tuple ``(array, kwargs, "image")``.

    Raises:
        napari_lightm.io.ImageReadError: a broken or unsupported file (one-line message).
    """
    from napari_lightm.io import is_dicom_seg

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [seg_layer_data(p) if is_dicom_seg(p) else image_layer_data(p) for p in paths]


def image_layer_data(path: str | os.PathLike) -> LayerData:
    """One file or folder as napari layer data, placed by its geometry."""
    from napari_lightm.io import read_image

    array, geometry = read_image(path)
    show_warnings(geometry.extra.get("warnings", []))
    kwargs = geometry.layer_kwargs()
    kwargs["name"] = layer_name(Path(path))
    limits = contrast_limits(array, geometry)
    if limits is not None:
        kwargs["contrast_limits"] = limits
    return array, kwargs, "image"


def seg_layer_data(path: str | os.PathLike) -> LayerData:
    """A DICOM-SEG file as a Labels layer on its source image's grid, with the segment
    names in ``metadata["class_names"]`` and the segments' colours.

    Raises:
        napari_lightm.io.ImageReadError: a damaged SEG, or a source series that is neither
            open nor found beside the file (the message says to open the series first).
    """
    import pydicom

    from napari_lightm._napari.annotation import IMAGE_KEY
    from napari_lightm.io import ImageReadError, read_dicom_seg
    from napari_lightm.io.dicom_seg import find_referenced_series, referenced_series

    path = Path(path)
    try:
        wanted = referenced_series(pydicom.dcmread(str(path), stop_before_pixels=True))
    except Exception as err:  # pydicom raises many types for a damaged header
        raise ImageReadError(f"{path}: damaged DICOM-SEG ({type(err).__name__})") from None
    image_layer = open_image_of(wanted)
    if image_layer is not None:
        reference: Any = image_layer.metadata["geometry"]
    else:
        reference = find_referenced_series(path)
        if reference is None:
            series = ", ".join(sorted(wanted))[:130] or "no series"
            raise ImageReadError(
                f"{path}: the DICOM series this segmentation was made on ({series}) is not "
                "open and not in this folder or the one above; open that series first, "
                "then this file"
            )
    result = read_dicom_seg(path, reference)
    show_warnings(result.geometry.extra.get("warnings", []))
    kwargs = result.geometry.layer_kwargs()
    kwargs["name"] = layer_name(path)
    kwargs["metadata"]["class_names"] = result.class_names
    if image_layer is not None:
        kwargs["metadata"][IMAGE_KEY] = image_layer.name  # the widget adopts the labels
    kwargs["colormap"] = segment_colormap(result.colours)
    kwargs["opacity"] = 0.5
    return result.labels, kwargs, "labels"


def open_image_of(series_uids: set[str]) -> Any:
    """The open Image layer read from one of ``series_uids`` (napari's current viewer),
    or None."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt viewer (headless use): nothing is open
        return None
    if viewer is None:
        return None
    from napari.layers import Image

    for layer in reversed(list(viewer.layers)):
        geometry = layer.metadata.get("geometry") if isinstance(layer, Image) else None
        extra = (geometry or {}).get("extra") or {}
        if extra.get("series_uid") in series_uids:
            return layer
    return None


def segment_colormap(colours: list[Any]) -> dict[Any, Any]:
    """napari colours of a segmentation: the segments' own colours, napari's default
    label colours for other values (what the user paints next)."""
    import numpy as np
    from napari.utils.colormaps import label_colormap

    default = label_colormap()
    top = max(255, len(colours) - 1)
    rgba = default.map(np.arange(top + 1, dtype=np.uint8 if top <= 255 else np.uint16))
    out: dict[Any, Any] = {k: tuple(float(v) for v in rgba[k]) for k in range(1, top + 1)}
    for k, colour in enumerate(colours):
        if k > 0 and colour is not None:
            out[k] = (*colour, 1.0)
    out[0] = (0.0, 0.0, 0.0, 0.0)
    out[None] = (0.0, 0.0, 0.0, 0.0)
    return out


def show_warnings(messages: list[str]) -> None:
    """Caveats found while reading (several series, uneven slices, NaN voxels, colour
    folded to grey) as napari notifications, so the user sees them."""
    if not messages:
        return
    from napari.utils.notifications import show_warning

    for message in messages:
        show_warning(message)


def layer_name(path: Path) -> str:
    """File name without its (double) suffix, or the folder name."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() else name


def contrast_limits(array: Any, geometry: Any) -> tuple[float, float] | None:
    """The header's VOI window, else a soft-tissue window for CT, else napari's default."""
    window = geometry.extra.get("window")
    if window and window[1] > 0:
        centre, width = window
        return (centre - width / 2, centre + width / 2)
    if geometry.intensity_unit == "HU":
        return CT_WINDOW
    return None
