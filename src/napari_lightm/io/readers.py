"""Read medical images into an array-order array plus its exact :class:`Geometry`.

One entry point, :func:`read_image`, picks the reader from the path:

============================  ==========================================================
path                          read with
============================  ==========================================================
``.nii``, ``.nii.gz``         SimpleITK (NIfTI; header and file size checked first)
``.nrrd``, ``.nhdr``          SimpleITK (NRRD, RAS headers converted to ITK's LPS)
``.mha``, ``.mhd``            SimpleITK (MetaImage)
a folder                      DICOM series (:mod:`napari_lightm.io._dicom`)
``.dcm``/``.dicom``/``.ima``  single DICOM file (CT/MR slice, CR/DX X-ray,
or a DICOM preamble           multi-frame)
``.png``, ``.jpg``, ``.tif``  SimpleITK; RGB(A) folded to grey, spacing unknown
============================  ==========================================================

Returned arrays are ``(z, y, x)`` or ``(y, x)``; intensities are rescaled (CT in HU);
integer files keep their integer type, rescaled or folded ones become ``float32``.

Bad input raises :class:`ImageReadError` (a ``ValueError``) with one line naming the
file and the problem. Softer problems (several series in a folder, uneven slice
spacing, NaN voxels, RGB folded to grey) are read anyway and listed in
``geometry.extra["warnings"]`` (and logged).

NaN/inf voxels, in every format: NaN becomes the lowest finite value of the image (air
/ background), +inf / -inf the highest / lowest finite value, so the model and the
display see a finite image; the number of replaced voxels is in the warning. An image
with no finite voxel is refused. (ITK's NIfTI library turns non-finite floats into 0
while reading, so NIfTI voxels that read as 0 are checked against the file's own bytes.)

Geometry: a header with NaN or non-positive spacing, a NaN origin or a direction that is
not a rotation/flip is refused (:class:`~napari_lightm.io.geometry.GeometryError`
turned into :class:`ImageReadError`). So are complex-valued voxels and images larger
than this machine's memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import (
    ARRAY_SUFFIXES,
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    META_SUFFIXES,
    NIFTI_SUFFIXES,
    PICTURE_SUFFIXES,
    VOLUME_SUFFIXES,
    ImageReadError,
    fold_rgb,
    is_dicom_file,
    itk_reason,
    suffix_of,
)
from napari_lightm.io.geometry import Geometry, GeometryError


def can_read(path: str | os.PathLike) -> bool:
    """Cheap test (suffix, DICOM preamble, folder with a DICOM file) used by napari's
    ``get_reader``; it does not open the image, so :func:`read_image` may still refuse it."""
    p = Path(path)
    if p.is_dir():
        from napari_lightm.io._dicom import find_dicom_files

        return bool(find_dicom_files(p, limit=1))
    if not p.is_file():
        return False
    return suffix_of(p) in IMAGE_SUFFIXES or is_dicom_file(p)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image file or DICOM folder.

    Args:
        path: file (NIfTI, NRRD, MetaImage, DICOM, PNG/JPEG/TIFF) or DICOM series folder.

    Returns:
        ``(array, geometry)``: ``array`` is ``(z, y, x)`` or ``(y, x)``, grey, finite;
        ``geometry`` holds spacing/origin/direction (ITK physical order, mm), the
        source path, modality (``"CT"``, ``"MR"``, ``"XR"``, ...) and intensity unit.

    Raises:
        ImageReadError: missing, empty, truncated or corrupt input, 4D / multi-channel
            / complex-valued volumes, no finite voxel, an invalid header geometry (NaN,
            zero spacing, sheared axes), ambiguous DICOM folders.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
    try:
        array, geometry = _read_any(p)
    except GeometryError as err:
        raise ImageReadError(f"{p}: invalid geometry in the header: {err}") from None
    geometry.source = str(p)
    return finite_image(array, geometry, p), geometry


def _read_any(p: Path) -> tuple[np.ndarray, Geometry]:
    """The reader for ``p`` (see the module docstring) and what it returns."""
    if p.is_dir():
        from napari_lightm.io._dicom import read_dicom_series

        array, geometry = read_dicom_series(p)
    else:
        suffix = suffix_of(p)
        if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and is_dicom_file(p)):
            from napari_lightm.io._dicom import read_dicom_file

            array, geometry = read_dicom_file(p)
        elif suffix in VOLUME_SUFFIXES:
            array, geometry = _read_volume(p)
        elif suffix in PICTURE_SUFFIXES:
            array, geometry = _read_picture(p)
        elif suffix in ARRAY_SUFFIXES:
            array, geometry = _read_array(p)
        else:
            raise ImageReadError(
                f"{p}: unsupported file type {suffix or '(no suffix)'}; napari-lightm reads "
                "NIfTI, NRRD, MetaImage, DICOM, PNG, JPEG, TIFF and NumPy .npy"
            )
    return array, geometry


def _read_array(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 2D or 3D ``.npy`` array in array order, unit spacing (``units="pixel"``)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ImageReadError(f"{path}: cannot read as a NumPy array ({err})") from None
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise ImageReadError(
            f"{path}: expected a 2D or 3D numeric array, got shape {array.shape} of {array.dtype}"
        )
    return array, Geometry.identity(array.ndim, units="pixel")


# --- SimpleITK formats ------------------------------------------------------------------


def read_sitk(path: Path, what: str, *, grid: bool = True) -> Any:
    """``SimpleITK.ReadImage`` with ITK's multi-line exception turned into one line.

    The header is checked before any voxel is read: its size against memory and, with
    ``grid`` (files that carry a physical grid), its spacing, origin and direction as a
    :class:`Geometry` (ITK can hang reading a file with a degenerate direction).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        check_fits_in_memory(path, reader)
        if grid:
            Geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
        return reader.Execute()
    except RuntimeError as err:
        raise ImageReadError(f"{path}: cannot read as {what} ({itk_reason(err)})") from None


def check_fits_in_memory(path: Path, reader: Any) -> None:
    """Refuse a header whose voxels would not fit in this machine's memory (a corrupt or
    hostile size field would otherwise make ITK allocate them before failing)."""
    import SimpleITK as sitk

    size = reader.GetSize()
    one = sitk.Image([1] * len(size), reader.GetPixelID(), reader.GetNumberOfComponents())
    needed = int(np.prod(size, dtype=object)) * one.GetSizeOfPixelComponent()
    needed *= reader.GetNumberOfComponents()
    memory = physical_memory()
    if memory is not None and needed > memory:
        raise ImageReadError(
            f"{path}: the header announces {tuple(reversed(size))} voxels "
            f"({needed / 2**30:.3g} GiB), more than this machine's memory "
            f"({memory / 2**30:.3g} GiB)"
        )


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """NIfTI / NRRD / MetaImage through SimpleITK, exact header geometry."""
    from napari_lightm.io._headers import (
        check_metaimage_header,
        check_nifti_complete,
        restore_nifti_nonfinite,
    )

    suffix = suffix_of(path)
    what = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD"}.get(
        suffix, "MetaImage"
    )
    meta = check_nifti_complete(path) if suffix in NIFTI_SUFFIXES else {}
    if suffix in META_SUFFIXES:
        check_metaimage_header(path)
    image = read_sitk(path, what)
    image = drop_singleton_4th_axis(image, path)
    array = to_grey(image, path)
    if meta:
        array = restore_nifti_nonfinite(path, array, meta)
    geometry = Geometry.from_sitk(image, extra={"format": what})
    if array.ndim == 3 and guess_ct(array):
        # NIfTI/NRRD/MHA carry no modality; signed data with air near -1000 is CT in HU
        geometry.modality, geometry.intensity_unit = "CT", "HU"
        geometry.extra["modality_from"] = "intensities (air near -1000)"
    return array, geometry


def drop_singleton_4th_axis(image: Any, path: Path) -> Any:
    """Return a 2D/3D image; a 4D image with one time point loses that axis, others are
    refused with their shape."""
    import SimpleITK as sitk

    if image.GetDimension() <= 3:
        return image
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        return sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
    shape = tuple(reversed(size))
    raise ImageReadError(
        f"{path}: {image.GetDimension()}D image of shape {shape} (array order, time first); "
        "napari-lightm reads 2D and 3D images, so extract one 3D volume first"
    )


def to_grey(image: Any, path: Path) -> np.ndarray:
    """Array-order grey array of a SimpleITK image; 2D RGB(A) is folded to grey with luma
    weights (other multi-channel images and complex values are refused)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "c":
        raise ImageReadError(
            f"{path}: complex-valued voxels ({array.dtype}); napari-lightm reads "
            "real-valued images, so save the magnitude first"
        )
    channels = image.GetNumberOfComponentsPerPixel()
    if channels == 1:
        return array
    if image.GetDimension() == 2 and channels in (3, 4):
        return fold_rgb(array, path)
    raise ImageReadError(
        f"{path}: {image.GetDimension()}D image with {channels} channels per voxel "
        f"(shape {array.shape}); napari-lightm reads single-channel (grey) images"
    )


def _read_picture(path: Path) -> tuple[np.ndarray, Geometry]:
    """PNG / JPEG / TIFF X-ray: grey array, spacing unknown (``units="pixel"``).

    Resolution tags (dpi) of picture files describe printing, not the patient, so they
    are ignored. Grey+alpha pictures keep their grey channel: ITK cannot read grey+alpha
    PNG (Pillow does) and reads grey+alpha TIFF with the alpha samples interleaved into
    the grey ones (tifffile does it right).
    """
    bit_depth, colour_type = _png_ihdr(path)
    if colour_type == PNG_GREY_ALPHA:
        if bit_depth != 8:
            raise ImageReadError(
                f"{path}: {bit_depth}-bit grey+alpha PNG is not supported (8-bit is); "
                "save it as grey without the alpha channel"
            )
        array, channels = _read_grey_alpha_png(path), 2
    elif suffix_of(path) in (".tif", ".tiff") and _tiff_samples_per_pixel(path) == 2:
        array, channels = _read_grey_alpha_tiff(path), 2
    else:
        image = read_sitk(path, "a picture (PNG/JPEG/TIFF)", grid=False)
        channels = image.GetNumberOfComponentsPerPixel()
        array = to_grey(image, path)
    geometry = Geometry.identity(
        array.ndim,
        units="pixel",
        modality="XR" if array.ndim == 2 else "unknown",
        extra={"format": suffix_of(path).lstrip(".").upper()},
    )
    if channels == 2:
        geometry.warn(f"{path.name}: grey+alpha image, alpha channel dropped")
    elif channels > 1:
        geometry.warn(f"{path.name}: colour image ({channels} channels) folded to grey")
    return array, geometry


def _tiff_samples_per_pixel(path: Path) -> int | None:
    """Samples per pixel of a TIFF file's first page (None when tifffile cannot tell)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].samplesperpixel)
    except Exception:  # a damaged file: ITK reports it in its own words
        return None


def _read_grey_alpha_tiff(path: Path) -> np.ndarray:
    """The grey samples of a grey+alpha TIFF, read with tifffile."""
    import tifffile

    try:
        array = tifffile.imread(path, key=0)
    except Exception as err:  # tifffile raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read as a TIFF picture ({err})") from None
    if array.ndim != 3 or array.shape[-1] != 2 or array.dtype.kind not in "biuf":
        raise ImageReadError(f"{path}: grey+alpha TIFF decoded as {array.dtype} {array.shape}")
    return np.ascontiguousarray(array[..., 0])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_ALPHA = 4  # IHDR colour type


def _png_ihdr(path: Path) -> tuple[int | None, int | None]:
    """Bit depth and colour type of a PNG file's IHDR chunk (None, None for other files)."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None, None
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None, None
    return head[24], head[25]


def _read_grey_alpha_png(path: Path) -> np.ndarray:
    """The grey channel of an 8-bit grey+alpha PNG, read with Pillow (which would cut a
    16-bit one to 8 bits)."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            array = np.asarray(picture)
    except Exception as err:  # Pillow raises many types for corrupt files
        raise ImageReadError(f"{path}: cannot read as a PNG picture ({err})") from None
    if array.ndim != 3 or array.shape[-1] != 2:
        raise ImageReadError(f"{path}: grey+alpha PNG decoded with shape {array.shape}")
    return np.ascontiguousarray(array[..., 0])


def guess_ct(array: np.ndarray) -> bool:
    """Signed intensities whose lowest percentile sits at air (-1000 HU +- 100): CT."""
    if array.dtype.kind not in "if" or array.size == 0:
        return False
    sample = array.ravel()[:: max(1, array.size // 200_000)]
    sample = sample[np.isfinite(sample)] if array.dtype.kind == "f" else sample
    if sample.size == 0:
        return False
    low = float(np.percentile(sample, 1))
    return -1100.0 <= low <= -900.0 and float(sample.max()) < 5000.0


def finite_image(array: np.ndarray, geometry: Geometry, path: Path) -> np.ndarray:
    """Replace NaN/inf voxels (see the module docstring) and say how many."""
    if array.dtype.kind != "f":
        return array
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return array
    if n_bad == array.size:
        raise ImageReadError(f"{path}: no finite voxel (all {array.size} are NaN or inf)")
    finite = array[~bad]
    low, high = finite.min(), finite.max()
    array = np.where(np.isnan(array), low, array)
    array = np.clip(array, low, high).astype(array.dtype, copy=False)
    geometry.warn(
        f"{path.name}: {n_bad} NaN/inf voxels replaced (NaN -> lowest value {low:g}, "
        f"inf -> highest/lowest finite value)"
    )
    return array


__all__ = [
    "ARRAY_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "can_read",
    "is_dicom_file",
    "read_image",
    "suffix_of",
]
