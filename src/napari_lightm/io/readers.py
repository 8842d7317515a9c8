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

NaN/inf voxels: NaN becomes the lowest finite value of the image (air / background),
+inf / -inf the highest / lowest finite value, so the model and the display see a
finite image; the number of replaced voxels is in the warning. An image with no
finite voxel is refused.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io.geometry import Geometry


class ImageReadError(ValueError):
    """A file or folder that cannot be read as an image; the message names it and why."""


NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + META_SUFFIXES
# plain NumPy arrays (unit spacing): read by the core and the CLI for datasets made by
# scripts; not offered to napari, whose own reader opens .npy
ARRAY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = VOLUME_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES

# ITU-R BT.601 luma weights: how RGB X-ray exports are folded back to one grey channel
_LUMA = np.array([0.299, 0.587, 0.114])


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole (``""`` when none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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
            volumes, ambiguous DICOM folders.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file or folder")
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
    geometry.source = str(p)
    return finite_image(array, geometry, p), geometry


def _read_array(path: Path) -> tuple[np.ndarray, Geometry]:
    """A 2D or 3D ``.npy`` array in array order, unit spacing (``units="pixel"``)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ImageReadError(f"{path}: cannot read as a NumPy array ({err})") from None
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise ImageReadError(
            f"{path}: expected a 2D or 3D numeric array, got shape {array.shape} "
            f"of {array.dtype}"
        )
    return array, Geometry.identity(array.ndim, units="pixel")


# --- SimpleITK formats ------------------------------------------------------------------


def read_sitk(path: Path, what: str) -> Any:
    """``SimpleITK.ReadImage`` with ITK's multi-line exception turned into one line."""
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImageReadError(f"{path}: cannot read as {what} ({itk_reason(err)})") from None


def itk_reason(err: Exception) -> str:
    """The informative line of an ITK exception (they span several lines)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ERROR:" in ln:
            return ln.split("ERROR:", 1)[1].strip()
    return lines[-1] if lines else type(err).__name__


def _read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """NIfTI / NRRD / MetaImage through SimpleITK, exact header geometry."""
    suffix = suffix_of(path)
    what = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD"}.get(
        suffix, "MetaImage"
    )
    if suffix in NIFTI_SUFFIXES:
        check_nifti_complete(path)
    image = read_sitk(path, what)
    image = drop_singleton_4th_axis(image, path)
    array = to_grey(image, path)
    geometry = Geometry.from_sitk(image, extra={"format": what})
    if array.ndim == 3 and guess_ct(array):
        # NIfTI/NRRD/MHA carry no modality; signed data with air near -1000 is CT in HU
        geometry.modality, geometry.intensity_unit = "CT", "HU"
        geometry.extra["modality_from"] = "intensities (air near -1000)"
    return array, geometry


def check_nifti_complete(path: Path) -> None:
    """Refuse truncated NIfTI files, which ITK would read silently with missing voxels.

    Compares the bytes the header promises (``vox_offset`` + voxels x ``bitpix``) with
    the file size, or with the uncompressed size recorded in a ``.nii.gz`` trailer.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({itk_reason(err)})") from None
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    if meta.get("nifti_type") not in (None, "1", "3"):  # 2/4: .hdr/.img pairs
        return
    try:
        ndim = int(meta["dim[0]"])
        n_voxels = int(np.prod([int(meta[f"dim[{i}]"]) for i in range(1, ndim + 1)]))
        expected = int(float(meta["vox_offset"])) + n_voxels * int(meta["bitpix"]) // 8
    except (KeyError, ValueError):
        return  # header fields ITK did not expose: let ITK decide
    if suffix_of(path) == ".nii.gz":
        actual = _gunzipped_size(path, expected)
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise ImageReadError(
            f"{path}: truncated NIfTI file ({actual} of {expected} bytes the header announces)"
        )


def _gunzipped_size(path: Path, expected: int) -> int:
    """Uncompressed size of a gzip file; refuses a stream that ends early.

    Fast path: the gzip trailer ends with the uncompressed size mod 2**32; when it
    equals what the header expects the file is whole (a cut file ends in compressed
    data, which matches only by rare chance). Otherwise decompress to count.
    """
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == expected % 2**32:
            return expected
    actual = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                actual += len(chunk)
    except (EOFError, OSError, gzip.BadGzipFile) as err:
        raise ImageReadError(f"{path}: truncated or corrupt gzip stream ({err})") from None
    return actual


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
    weights (multi-channel volumes are refused)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    channels = image.GetNumberOfComponentsPerPixel()
    if channels == 1:
        return array
    if image.GetDimension() == 2 and channels in (3, 4):
        return fold_rgb(array, path)
    raise ImageReadError(
        f"{path}: {image.GetDimension()}D image with {channels} channels per voxel "
        f"(shape {array.shape}); napari-lightm reads single-channel (grey) images"
    )


def fold_rgb(array: np.ndarray, path: Path | None = None) -> np.ndarray:
    """``[H, W, 3|4]`` colour to ``[H, W]`` grey (alpha dropped). Grey stored as RGB
    (equal channels) is returned exactly, in its own dtype; real colour becomes float32 luma."""
    rgb = array[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return (rgb.astype(np.float32) @ _LUMA.astype(np.float32)).astype(np.float32)


def _read_picture(path: Path) -> tuple[np.ndarray, Geometry]:
    """PNG / JPEG / TIFF X-ray: grey array, spacing unknown (``units="pixel"``).

    Resolution tags (dpi) of picture files describe printing, not the patient, so they
    are ignored.
    """
    image = read_sitk(path, "a picture (PNG/JPEG/TIFF)")
    channels = image.GetNumberOfComponentsPerPixel()
    array = to_grey(image, path)
    geometry = Geometry.identity(
        array.ndim,
        units="pixel",
        modality="XR" if array.ndim == 2 else "unknown",
        extra={"format": suffix_of(path).lstrip(".").upper()},
    )
    if channels > 1:
        geometry.warn(f"{path.name}: colour image ({channels} channels) folded to grey")
    return array, geometry


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
