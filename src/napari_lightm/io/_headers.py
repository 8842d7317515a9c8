"""Header and size checks of NIfTI and MetaImage files before (and after) ITK reads them.

ITK reads a truncated NIfTI without complaint, turns non-finite NIfTI floats into 0,
crashes the process on some MetaImage ``NDims`` values and reads "nan" grid fields as 0.
These checks read the files' own bytes so :func:`~napari_lightm.io.readers.read_image`
can refuse such files with one line (or restore the non-finite voxels), and the writers
can check a NIfTI they just wrote.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from napari_lightm.io._base import ImageReadError, itk_reason, suffix_of

# ITK's MetaImage reader handles at most this many dimensions; larger NDims values crash it
META_MAX_NDIMS = 5
# MetaImage fields that place the grid; ITK reads "nan" in them as 0 without a word
META_GRID_FIELDS = frozenset(
    {"DimSize", "ElementSpacing", "ElementSize", "Offset", "Origin", "Position"}
    | {"TransformMatrix", "Rotation", "Orientation"}
)


def check_metaimage_header(path: Path) -> None:
    """Refuse a MetaImage header that ITK would crash on or misread: an ``NDims`` it
    cannot take (its reader sizes fixed arrays from it and crashes the process on large
    or negative values) and grid fields that are not finite numbers."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16).decode("latin-1")
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror})") from None
    for line in head.splitlines():
        key, _, value = line.partition("=")
        key = key.strip()
        if key == "ElementDataFile":
            return
        if key == "NDims":
            try:
                valid = 1 <= int(value.split()[0]) <= META_MAX_NDIMS
            except (IndexError, ValueError):
                valid = False
        elif key in META_GRID_FIELDS:
            try:
                valid = all(np.isfinite(float(v)) for v in value.split())
            except ValueError:
                valid = False
        else:
            continue
        if not valid:
            raise ImageReadError(
                f"{path}: corrupt MetaImage header ({key} = {value.strip()[:60]!r})"
            )


# NIfTI-1 datatype codes (nifti1.h) of the voxel types handled by hand here
NIFTI_FLOATS = {16: "f4", 64: "f8"}
NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
NIFTI1_HEADER_SIZE = 348


def check_nifti_complete(path: Path) -> dict[str, str]:
    """Refuse truncated and complex-valued NIfTI files and voxel sizes that are not
    positive; returns the header fields ITK read.

    ITK would read a truncated file silently with missing voxels: the bytes the header
    promises (``vox_offset`` + voxels x ``bitpix``) are compared with the file size, or
    with the uncompressed size recorded in a ``.nii.gz`` trailer. It would also turn a
    zero or NaN ``pixdim`` into 1 mm without a word, so ``pixdim`` is read from the file.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ImageReadError(f"{path}: not a readable NIfTI file ({itk_reason(err)})") from None
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    datatype = _int_or_none(meta.get("datatype"))
    if datatype in NIFTI_COMPLEX:
        raise ImageReadError(
            f"{path}: complex-valued NIfTI ({NIFTI_COMPLEX[datatype]} voxels); napari-lightm "
            "reads real-valued images, so save the magnitude first"
        )
    if meta.get("nifti_type") not in (None, "1", "3"):  # 2/4: .hdr/.img pairs
        return meta
    _check_nifti_pixdim(path)
    try:
        ndim = int(meta["dim[0]"])
        n_voxels = int(np.prod([int(meta[f"dim[{i}]"]) for i in range(1, ndim + 1)], dtype=object))
        expected = int(float(meta["vox_offset"])) + n_voxels * int(meta["bitpix"]) // 8
    except (KeyError, ValueError, OverflowError):
        return meta  # header fields ITK did not expose: let ITK decide
    if suffix_of(path) == ".nii.gz":
        actual = _gunzipped_size(path, expected)
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise ImageReadError(
            f"{path}: truncated NIfTI file ({actual} of {expected} bytes the header announces)"
        )
    return meta


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(float(text)) if text is not None else None
    except (ValueError, OverflowError):
        return None


def restore_nifti_nonfinite(path: Path, array: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """Put back the NaN/inf voxels of a float NIfTI file that ITK read as 0.

    ITK's NIfTI library replaces non-finite floats by 0 before applying ``scl_slope`` /
    ``scl_inter``, so only voxels now equal to 0 or to ``scl_inter`` can have been
    NaN/inf; when there are any, the file's own voxel bytes tell which were. The
    restored voxels go through :func:`finite_image` like those of any other format.
    """
    code = _int_or_none(meta.get("datatype"))
    if code not in NIFTI_FLOATS or array.dtype.kind != "f":
        return array
    slope, inter = (_float_or(meta.get(k), d) for k, d in (("scl_slope", 1.0), ("scl_inter", 0.0)))
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(inter):
        slope, inter = 1.0, 0.0  # how the library treats an unusable scaling
    if not (np.any(array == 0) or np.any(array == array.dtype.type(inter))):
        return array
    raw = _nifti_voxels(path, NIFTI_FLOATS[code], int(float(meta["vox_offset"])), array.size)
    if raw is None:
        return array
    bad = ~np.isfinite(raw)
    if not bad.any():
        return array
    array = np.array(array, copy=True)
    with np.errstate(invalid="ignore", over="ignore"):
        array.reshape(-1)[bad] = raw[bad].astype(np.float64) * slope + inter
    return array


def _float_or(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def _nifti_header(path: Path) -> tuple[bytes, str] | None:
    """The 348-byte header of a single-file NIfTI-1 and its byte order (``"<"``/``">"``);
    None when the file does not start with one."""
    opener = gzip.open if suffix_of(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(NIFTI1_HEADER_SIZE)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if len(head) < NIFTI1_HEADER_SIZE:
        return None
    for order, name in (("<", "little"), (">", "big")):
        if int.from_bytes(head[:4], name) == NIFTI1_HEADER_SIZE:
            return head, order
    return None


def _check_nifti_pixdim(path: Path) -> None:
    """Refuse a NIfTI-1 file whose voxel size along a spatial axis of more than one voxel
    (``pixdim[1..3]``) is zero, negative or not finite."""
    header = _nifti_header(path)
    if header is None:
        return
    head, order = header
    ndim = min(max(int(np.frombuffer(head, order + "i2", 1, 40)[0]), 0), 3)
    size = np.frombuffer(head, order + "i2", ndim, 42)
    pixdim = np.frombuffer(head, order + "f4", ndim, 80)
    if not np.all((np.isfinite(pixdim) & (pixdim > 0)) | (size <= 1)):
        raise ImageReadError(
            f"{path}: invalid geometry in the header: voxel size (pixdim) "
            f"{tuple(float(v) for v in pixdim)} must be positive and finite"
        )


def _nifti_voxels(path: Path, kind: str, offset: int, count: int) -> np.ndarray | None:
    """``count`` voxels of numpy kind ``kind`` at ``offset`` of a single-file NIfTI-1,
    in the file's byte order (flat, x fastest); None when the file does not hold them."""
    header = _nifti_header(path)
    if header is None:
        return None
    opener = gzip.open if suffix_of(path) == ".nii.gz" else open
    itemsize = np.dtype(kind).itemsize
    try:
        with opener(path, "rb") as f:
            f.seek(offset)
            data = f.read(count * itemsize)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if len(data) != count * itemsize:
        return None
    return np.frombuffer(data, dtype=header[1] + kind)


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
