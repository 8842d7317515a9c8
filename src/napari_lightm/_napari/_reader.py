"""npe2 reader: medical images and DICOM folders as napari Image layers with geometry.

``get_reader`` only looks at suffixes, DICOM preambles and folder contents (fast, never
raises); the reading itself, and any clear error about a broken file, happens in the
returned function, which napari calls and whose errors it shows as notifications.
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
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [image_layer_data(p) for p in paths]


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
