"""read_image: every format with exact geometry, DICOM series and X-rays, and bad input."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm.io import Geometry, ImageReadError, can_read, read_image

OBLIQUE = tuple(Rotation.from_euler("xyz", [15, -25, 40], degrees=True).as_matrix().ravel())
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"identity": None, "oblique": OBLIQUE, "LPS/RAS flipped": FLIPPED}
VOLUME_SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


def write_sitk(path: Path, array: np.ndarray, geometry: Geometry | None = None) -> Path:
    """Write an array-order array with SimpleITK (the way other tools would)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(
        array,
        isVector=array.ndim == 3
        and array.shape[-1] in (3, 4)
        and geometry is not None
        and geometry.ndim == 2,
    )
    if geometry is not None:
        geometry.apply_to_sitk(image)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    spacing_xy: tuple[float, float] = (0.7, 0.8),
    positions: list[float] | None = None,
    direction: tuple[float, ...] | None = None,
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1",
    prefix: str = "slice",
) -> np.ndarray:
    """A CT series ``[z, y, x]`` in HU stored as HU + 1024 with RescaleIntercept -1024.

    ``positions`` are distances along the slice normal (default every 2.5 mm); files are
    named in reverse order so the reader must sort by position. Returns the normal.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if direction is None else np.reshape(direction, (3, 3))
    positions = [2.5 * k for k in range(len(hu))] if positions is None else positions
    origin = np.array([-50.0, -60.0, 10.0])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, (plane, along) in enumerate(zip(hu, positions)):
        image = sitk.GetImageFromArray(plane.astype(np.int16))
        image.SetSpacing(spacing_xy)
        position = origin + rot[:, 2] * along
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000e": series_uid,
            "0020|0011": "7",
            "0008|103e": f"test {prefix}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in rot[:, :2].T.ravel()),
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{len(hu) - k:03d}.dcm"))
        writer.Execute(image)
    return rot[:, 2]


def hu_volume(shape=(5, 12, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


# --- NIfTI / NRRD / MetaImage -------------------------------------------------------------


@pytest.mark.parametrize("suffix", VOLUME_SUFFIXES)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_volume_formats_keep_array_and_header(tmp_path, suffix, direction):
    array = np.random.default_rng(1).normal(size=(6, 9, 11)).astype(np.float32)
    geometry = Geometry((0.9, 0.75, 3.0), (-12.5, 40.25, 7.0), DIRECTIONS[direction])
    path = write_sitk(tmp_path / f"vol{suffix}", array, geometry)
    image, read = read_image(path)
    np.testing.assert_array_equal(image, array)
    # NIfTI stores the header in float32 (quaternion), the others as decimal text
    assert read.allclose(geometry, atol=1e-5 if "nii" in suffix else 1e-9)
    assert read.source == str(path)
    assert read.units == "mm"


def test_2d_volume_file_is_2d(tmp_path):
    array = np.arange(20, dtype=np.uint16).reshape(4, 5)
    image, geometry = read_image(write_sitk(tmp_path / "xr.mha", array, Geometry((0.2, 0.3))))
    assert image.shape == (4, 5) and image.dtype == np.uint16
    assert geometry.spacing == (0.2, 0.3)


@pytest.mark.parametrize(
    ("values", "modality", "unit"),
    [((-1024, 1500), "CT", "HU"), ((0, 900), "unknown", "")],
)
def test_ct_recognised_from_air_at_minus_1000(tmp_path, values, modality, unit):
    array = np.random.default_rng(0).integers(*values, size=(4, 16, 16)).astype(np.int16)
    array[:, :4] = values[0]  # some air (or MR background)
    _, geometry = read_image(write_sitk(tmp_path / "v.nii.gz", array))
    assert (geometry.modality, geometry.intensity_unit) == (modality, unit)


# --- DICOM --------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_dicom_series_reads_hu_spacing_and_position(tmp_path, direction):
    hu = hu_volume()
    write_dicom_series(tmp_path / "ct", hu, direction=DIRECTIONS[direction])
    image, geometry = read_image(tmp_path / "ct")
    np.testing.assert_array_equal(image, hu)  # sorted by position, rescaled to HU
    np.testing.assert_allclose(geometry.spacing, (0.7, 0.8, 2.5), atol=1e-5)
    np.testing.assert_allclose(geometry.origin, (-50.0, -60.0, 10.0), atol=1e-5)
    expected = np.eye(3) if DIRECTIONS[direction] is None else DIRECTIONS[direction]
    np.testing.assert_allclose(geometry.direction, np.ravel(expected), atol=1e-5)
    assert (geometry.modality, geometry.intensity_unit) == ("CT", "HU")
    assert not geometry.extra.get("warnings")


def test_dicom_series_agrees_with_simpleitk_on_real_files():
    """pydicom's CT5N test series (5 slices): same voxels and header as ITK's reader."""
    import SimpleITK as sitk
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
    image, geometry = read_image(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    np.testing.assert_array_equal(image, sitk.GetArrayFromImage(itk))
    assert geometry.allclose(Geometry.from_sitk(itk), atol=1e-4)
    assert geometry.spacing[2] == pytest.approx(2.5, abs=1e-4)


def test_non_uniform_slice_spacing_warns(tmp_path):
    write_dicom_series(tmp_path / "ct", hu_volume(), positions=[0, 2.5, 5, 10, 12.5])
    image, geometry = read_image(tmp_path / "ct")
    assert image.shape == (5, 12, 10)
    (warning,) = geometry.extra["warnings"]
    assert "non-uniform slice spacing" in warning
    assert geometry.spacing[2] == pytest.approx(12.5 / 4)


def test_folder_with_two_series_reads_the_larger_and_says_so(tmp_path):
    write_dicom_series(tmp_path, hu_volume((3, 12, 10)), series_uid="1.2.3.1", prefix="small")
    big = hu_volume((5, 8, 8), seed=1)
    write_dicom_series(tmp_path, big, series_uid="1.2.3.2", prefix="big")
    image, geometry = read_image(tmp_path)
    np.testing.assert_array_equal(image, big)
    assert geometry.extra["series_uid"] == "1.2.3.2"
    assert any("2 DICOM series" in w for w in geometry.extra["warnings"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no DICOM files"),
        (lambda d: (d / "notes.txt").write_text("not an image"), "no DICOM files"),
        (
            lambda d: [
                write_dicom_series(d, hu_volume((3, 8, 8)), series_uid=f"1.2.9.{i}", prefix=f"s{i}")
                for i in (1, 2)
            ],
            "largest tie",
        ),
        (
            lambda d: write_dicom_series(d, hu_volume((4, 8, 8)), positions=[0, 2.5, 2.5, 5]),
            "share a position",
        ),
        (
            lambda d: [
                write_dicom_series(d, hu_volume((2, 8, 8)), prefix="a"),
                write_dicom_series(d, hu_volume((2, 9, 8)), positions=[5, 7.5], prefix="b"),
            ],
            "mixed DICOM series",
        ),
    ],
    ids=["empty", "no dicom", "two equal series", "duplicate positions", "mixed sizes"],
)
def test_bad_dicom_folders_are_refused(tmp_path, make, message):
    folder = tmp_path / "dicom"
    folder.mkdir()
    make(folder)
    with pytest.raises(ImageReadError, match=message) as err:
        read_image(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


@pytest.mark.parametrize(
    ("name", "modality", "spacing"),
    [("CT_small.dcm", "CT", (0.661468, 0.661468)), ("MR_small.dcm", "MR", (0.3125, 0.3125))],
)
def test_single_dicom_slices_from_pydicom(name, modality, spacing):
    import pydicom

    path = pydicom_file(name)
    image, geometry = read_image(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    np.testing.assert_array_equal(image, expected)  # HU for CT
    assert image.shape == (ds.Rows, ds.Columns)
    assert geometry.modality == modality
    assert geometry.spacing == pytest.approx(spacing)
    assert geometry.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient[:2]])
    assert geometry.intensity_unit == ("HU" if modality == "CT" else "")


def test_cr_xray_monochrome1_is_inverted_with_imager_spacing():
    """pydicom's CR test image: MONOCHROME1, ImagerPixelSpacing only."""
    import pydicom

    path = pydicom_file("CT_small.dcm").parent / "dicomdirtests/77654033/CR1/6154"
    image, geometry = read_image(path)  # no suffix: found by the DICOM preamble
    ds = pydicom.dcmread(path)
    rescaled = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image, rescaled.max() + rescaled.min() - rescaled, rtol=1e-6)
    assert geometry.modality == "XR" and geometry.extra["dicom_modality"] == "CR"
    assert geometry.spacing == pytest.approx((0.1, 0.1))
    assert geometry.extra["spacing_from"] == "ImagerPixelSpacing"
    assert geometry.extra["inverted"] == "MONOCHROME1"
    centre, width = (float(ds.WindowCenter), float(ds.WindowWidth))
    mirrored = rescaled.max() + rescaled.min() - centre  # the window follows the flip
    assert geometry.extra["window"] == pytest.approx([mirrored, width])


def write_enhanced_ct(path: Path, hu: np.ndarray, along_z: list[float]) -> Path:
    """An enhanced (multi-frame) CT: geometry and rescale live in functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.SeriesInstanceUID = "CT", generate_uid()
    ds.NumberOfFrames, ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    measures, orientation, rescale = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.8, 0.7], 2.5
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [rescale]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for z in along_z:
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = [-50.0, -60.0, z]
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = (hu.astype(np.int32) + 1024).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_ct_uses_functional_groups(tmp_path):
    hu = hu_volume((3, 8, 10))
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, along_z=[15.0, 10.0, 12.5])
    image, geometry = read_image(path)
    np.testing.assert_array_equal(image, hu[[1, 2, 0]])  # frames sorted by position, in HU
    assert geometry.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert geometry.origin == pytest.approx((-50.0, -60.0, 10.0))
    assert (geometry.modality, geometry.intensity_unit) == ("CT", "HU")


def test_rt_dose_grid_from_frame_offsets():
    import pydicom

    image, geometry = read_image(pydicom_file("rtdose.dcm"))
    ds = pydicom.dcmread(pydicom_file("rtdose.dcm"))
    assert image.shape == (15, 10, 10)
    assert geometry.spacing == pytest.approx((*[float(v) for v in ds.PixelSpacing][::-1], 5.0))
    np.testing.assert_allclose(image, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)


def test_dicom_without_image_and_truncated_dicom_are_refused(tmp_path):
    with pytest.raises(ImageReadError, match="without an image"):
        read_image(pydicom_file("rtplan.dcm"))
    with pytest.raises(ImageReadError, match="MR_truncated"):
        read_image(pydicom_file("MR_truncated.dcm"))


def test_unknown_transfer_syntax_is_refused_naming_the_file(tmp_path):
    import pydicom

    ds = pydicom.dcmread(pydicom_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"  # a UID that is no transfer syntax
    path = tmp_path / "strange.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"unknown DICOM transfer syntax '1\.2\.3\.4\.5\.6'"):
        read_image(path)
    with pytest.raises(ImageReadError, match="strange.dcm"):
        read_image(path)


def test_damaged_dicom_header_value_is_refused_as_corrupt(tmp_path):
    data = pydicom_file("CT_small.dcm").read_bytes()
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data.replace(b"DS\x06\x00-1024 ", b"DS\x06\x00\x001024 ", 1))
    with pytest.raises(ImageReadError, match="damaged.dcm: corrupt DICOM header") as err:
        read_image(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("slope", ["1e30", "nan"])
def test_implausible_rescale_slope_is_refused(tmp_path, slope):
    """A huge integer slope wrapped around in int32 arithmetic; NaN made every voxel NaN."""
    data = pydicom_file("CT_small.dcm").read_bytes()
    path = tmp_path / "slope.dcm"  # (0028,1053) RescaleSlope "1 " -> a 4-byte value
    path.write_bytes(
        data.replace(
            b"(\x00S\x10DS\x02\x001 ", b"(\x00S\x10DS\x04\x00" + slope[:4].encode().ljust(4), 1
        )
    )
    with pytest.raises(ImageReadError, match="slope.dcm: implausible DICOM rescale"):
        read_image(path)


def test_series_with_rounded_orientation_reads_with_unit_cosines(tmp_path):
    """Cosines written with few decimals are a little off unit length; the direction is
    normalised instead of refused as scaled."""
    import pydicom

    write_dicom_series(tmp_path / "ct", hu_volume((3, 6, 8)))
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0009, 0, 0, 0, 0.9991, 0]
        ds.save_as(path)
    _, geometry = read_image(tmp_path / "ct")
    np.testing.assert_allclose(geometry.direction_matrix, np.eye(3), atol=1e-12)


def test_series_with_non_perpendicular_orientation_is_refused(tmp_path):
    """Row and column cosines 63 degrees apart: no rotation can place such slices."""
    import pydicom

    write_dicom_series(tmp_path / "ct", hu_volume((3, 6, 8)))
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0.447214, 0.894427, 0]
        ds.save_as(path)
    with pytest.raises(ImageReadError, match="different orientations"):
        read_image(tmp_path / "ct")


def test_every_pydicom_test_file_reads_or_fails_clearly():
    """napari must never see anything but an image or an ImageReadError."""
    files = sorted(pydicom_file("CT_small.dcm").parent.glob("*.dcm"))
    assert len(files) > 40
    read = 0
    for path in files:
        try:
            image, _ = read_image(path)
        except ImageReadError as err:
            assert path.name in str(err) and "\n" not in str(err)
        else:
            assert image.ndim in (2, 3) and np.isfinite(image).all()
            read += 1
    assert read > 40


# --- files that nibabel ships ---------------------------------------------------------


@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"])
def test_nibabel_files_match_nibabel_geometry(name):
    import nibabel as nib
    from nibabel.testing import data_path

    path = Path(data_path) / name
    image, geometry = read_image(path)
    nii = nib.load(path)
    assert image.shape == nii.shape[::-1]
    np.testing.assert_allclose(geometry.spacing, nii.header.get_zooms()[:3], rtol=1e-6)
    lps = np.diag([-1, -1, 1, 1]) @ nii.affine  # nibabel is RAS, ITK is LPS
    np.testing.assert_allclose(geometry.origin, lps[:3, 3], atol=1e-4)
    columns = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    np.testing.assert_allclose(geometry.direction_matrix, columns, atol=1e-4)
    np.testing.assert_allclose(image, np.asarray(nii.dataobj).T, rtol=1e-6)


def test_4d_file_is_refused_with_its_shape():
    from nibabel.testing import data_path

    with pytest.raises(ImageReadError, match=r"4D image of shape \(2, 24, 96, 128\)"):
        read_image(Path(data_path) / "example4d.nii.gz")


def test_4d_with_one_time_point_reads_as_3d(tmp_path):
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(np.ones((3, 4, 5), np.float32))
    volume.SetSpacing((0.5, 0.6, 0.7))
    sitk.WriteImage(sitk.JoinSeries([volume]), str(tmp_path / "t1.nii.gz"))
    image, geometry = read_image(tmp_path / "t1.nii.gz")
    assert image.shape == (3, 4, 5)
    assert geometry.spacing == pytest.approx((0.5, 0.6, 0.7))


def test_multichannel_volume_is_refused(tmp_path):
    import SimpleITK as sitk

    sitk.WriteImage(
        sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32)), str(tmp_path / "v.mha")
    )
    with pytest.raises(ImageReadError, match="2 channels"):
        read_image(tmp_path / "v.mha")


# --- pictures (X-ray exports) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "dtype"), [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint16)]
)
def test_grey_pictures_keep_values(tmp_path, suffix, dtype):
    array = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, size=(20, 30)).astype(dtype)
    image, geometry = read_image(write_sitk(tmp_path / f"xr{suffix}", array))
    np.testing.assert_array_equal(image, array)
    assert (geometry.units, geometry.modality, geometry.spacing) == ("pixel", "XR", (1.0, 1.0))


def test_rgb_xray_is_folded_to_grey(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, size=(20, 30, 3)).astype(np.uint8)
    image, geometry = read_image(write_sitk(tmp_path / "xr.png", rgb, Geometry((1.0, 1.0))))
    assert image.shape == (20, 30) and image.dtype == np.float32
    np.testing.assert_allclose(image, rgb @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    assert "folded to grey" in geometry.extra["warnings"][0]


def test_grey_saved_as_rgb_stays_exact(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, size=(20, 30)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    image, _ = read_image(write_sitk(tmp_path / "xr.png", rgb, Geometry((1.0, 1.0))))
    np.testing.assert_array_equal(image, grey)


def test_jpeg_reads_as_grey_2d(tmp_path):
    grey = np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))
    image, geometry = read_image(write_sitk(tmp_path / "xr.jpg", grey))
    assert image.shape == (24, 32) and geometry.ndim == 2
    assert np.abs(image.astype(int) - grey).mean() < 4  # lossy


def grey_alpha_png(path: Path, grey: np.ndarray, bit_depth: int = 8) -> Path:
    """A grey+alpha PNG (colour type 4) of ``grey``, alpha opaque, written by hand."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    dtype = ">u1" if bit_depth == 8 else ">u2"
    pixels = np.stack([grey, np.full_like(grey, np.iinfo(grey.dtype).max)], axis=-1)
    rows = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in pixels)
    height, width = grey.shape
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 4, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def grey_alpha_tiff(path: Path, grey: np.ndarray) -> Path:
    import tifffile

    alpha = np.full_like(grey, np.iinfo(grey.dtype).max)
    tifffile.imwrite(
        path, np.stack([grey, alpha], axis=-1), photometric="minisblack", extrasamples=[2]
    )
    return path


@pytest.mark.parametrize(
    ("write", "name"), [(grey_alpha_png, "la.png"), (grey_alpha_tiff, "la.tif")], ids=["png", "tif"]
)
def test_grey_alpha_picture_reads_as_grey(tmp_path, write, name):
    """ITK cannot read grey+alpha PNG, and reads grey+alpha TIFF with the alpha samples
    interleaved into the grey ones."""
    grey = np.random.default_rng(0).integers(0, 255, size=(12, 17)).astype(np.uint8)
    image, geometry = read_image(write(tmp_path / name, grey))
    np.testing.assert_array_equal(image, grey)
    assert image.dtype == np.uint8 and geometry.modality == "XR"
    assert "alpha channel dropped" in geometry.extra["warnings"][0]


def test_16_bit_grey_alpha_png_is_refused_clearly(tmp_path):
    grey = np.arange(12 * 17, dtype=np.uint16).reshape(12, 17) * 300
    with pytest.raises(ImageReadError, match="la16.png: 16-bit grey\\+alpha PNG is not"):
        read_image(grey_alpha_png(tmp_path / "la16.png", grey, bit_depth=16))


# --- NaN / inf ------------------------------------------------------------------------


def write_float_dicom(path: Path, array: np.ndarray) -> Path:
    """A 2D parametric map with Float Pixel Data (float32 voxels, NaN allowed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality, ds.PixelSpacing = "MR", [0.5, 0.5]
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = array.astype("<f4").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def with_nan_and_inf(shape: tuple[int, ...]) -> np.ndarray:
    array = np.linspace(-5, 5, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    array.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    return array


@pytest.mark.parametrize("suffix", [*VOLUME_SUFFIXES, ".tif", ".dcm"])
def test_nan_and_inf_voxels_are_replaced_and_reported_in_every_format(tmp_path, suffix):
    """NaN -> lowest finite value, +inf -> highest, -inf -> lowest, with a warning; ITK's
    NIfTI library would turn them into 0 (water in HU) without a word."""
    array = with_nan_and_inf((4, 5) if suffix in (".tif", ".dcm") else (3, 4, 5))
    path = tmp_path / f"nan{suffix}"
    write_float_dicom(path, array) if suffix == ".dcm" else write_sitk(path, array)
    image, geometry = read_image(path)
    finite = array[np.isfinite(array)]
    assert np.isfinite(image).all()
    assert image.ravel()[0] == finite.min()  # NaN -> lowest
    assert image.ravel()[1] == finite.max()  # +inf -> highest
    assert image.ravel()[2] == finite.min()  # -inf -> lowest
    assert "3 NaN/inf voxels replaced" in geometry.extra["warnings"][0]
    np.testing.assert_array_equal(image.ravel()[3:], array.ravel()[3:])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_nan_survives_big_endian_and_negative_scaling(tmp_path, suffix):
    import nibabel as nib

    array = with_nan_and_inf((3, 4, 5))  # array order (z, y, x); nibabel's is (x, y, z)
    nii = nib.Nifti1Image(array.T, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    nii.header.set_slope_inter(-2.0, 1.0)
    nib.save(nii, tmp_path / f"scaled{suffix}")
    image, geometry = read_image(tmp_path / f"scaled{suffix}")
    scaled = array.ravel() * np.float32(-2.0) + np.float32(1.0)  # NaN, -inf, +inf
    finite = scaled[np.isfinite(scaled)]
    np.testing.assert_array_equal(image.ravel()[:3], [finite.min(), finite.min(), finite.max()])
    np.testing.assert_allclose(image.ravel()[3:], scaled[3:], rtol=1e-6)
    assert "3 NaN/inf voxels replaced" in geometry.extra["warnings"][0]


def test_nifti_zeros_that_were_zeros_stay_zeros(tmp_path):
    array = np.zeros((3, 4, 5), np.float32)
    array[1] = 2.5
    image, geometry = read_image(write_sitk(tmp_path / "zeros.nii.gz", array))
    np.testing.assert_array_equal(image, array)
    assert "warnings" not in geometry.extra


@pytest.mark.parametrize("suffix", [".mha", ".nii", ".nii.gz"])
def test_all_nan_image_is_refused(tmp_path, suffix):
    path = write_sitk(tmp_path / f"nan{suffix}", np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(ImageReadError, match="no finite voxel"):
        read_image(path)


def test_complex_nifti_is_refused_in_one_line(tmp_path):
    import nibabel as nib

    values = (np.arange(60) * (1 + 1j)).reshape(5, 4, 3).astype(np.complex64)
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "phase.nii.gz")
    with pytest.raises(ImageReadError, match="complex-valued NIfTI") as err:
        read_image(tmp_path / "phase.nii.gz")
    assert "phase.nii.gz" in str(err.value) and "\n" not in str(err.value)


# --- invalid header geometry ----------------------------------------------------------


def edit_header(path: Path, pattern: bytes, replacement: bytes) -> Path:
    data = path.read_bytes()
    edited = re.sub(pattern, replacement, data, count=1)
    assert edited != data, pattern
    path.write_bytes(edited)
    return path


def plain_volume(tmp_path: Path, suffix: str, name: str = "grid") -> Path:
    import SimpleITK as sitk

    path = tmp_path / f"{name}{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(path), False)
    return path


def set_nifti_float(path: Path, offset: int, value: float) -> Path:
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))
    return path


NIFTI_PIXDIM_X = 80  # byte offset of pixdim[1]


@pytest.mark.parametrize(
    ("suffix", "edit", "message"),
    [
        (
            ".nrrd",
            (rb"space directions: .*", b"space directions: (1,0.5,0) (0,1,0) (0,0,1)"),
            "not a rotation or flip",
        ),
        (
            ".nrrd",
            (rb"space directions: .*", b"space directions: (0,0,0) (0,1,0) (0,0,1)"),
            "spacing must be positive",
        ),
        (
            ".mha",
            (rb"TransformMatrix = .*", b"TransformMatrix = 1 0.5 0 0 1 0 0 0 1"),
            "not a rotation or flip",
        ),
        (".mha", (rb"ElementSpacing = .*", b"ElementSpacing = 0 1 1"), "spacing must be positive"),
        (
            ".mha",
            (rb"ElementSpacing = .*", b"ElementSpacing = -0.5 1 1"),
            "spacing must be positive",
        ),
        (".mha", (rb"Offset = .*", b"Offset = nan 0 0"), r"corrupt MetaImage header \(Offset"),
        (".nii", float("nan"), r"voxel size \(pixdim\)"),
        (".nii", 0.0, r"voxel size \(pixdim\)"),
        (".nii", -2.0, r"voxel size \(pixdim\)"),
    ],
    ids=[
        "nrrd shear",
        "nrrd zero",
        "mha shear",
        "mha zero",
        "mha negative",
        "mha nan origin",
        "nifti nan pixdim",
        "nifti zero pixdim",
        "nifti negative pixdim",
    ],
)
def test_invalid_header_geometry_is_refused(tmp_path, suffix, edit, message):
    path = plain_volume(tmp_path, suffix)
    if suffix == ".nii":
        set_nifti_float(path, NIFTI_PIXDIM_X, edit)
    else:
        edit_header(path, *edit)
    with pytest.raises(ImageReadError, match=message) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_metaimage_headers_that_crash_or_hang_itk_are_refused(tmp_path):
    """ITK's MetaImage reader crashes the process on a huge NDims and never returns on a
    degenerate TransformMatrix: both must be refused before ITK reads them (checked in a
    child process, so that a regression fails this test instead of ending the run)."""
    crash = edit_header(plain_volume(tmp_path, ".mha"), rb"NDims = 3", b"NDims = 1000")
    hang = plain_volume(tmp_path, ".mha", "hang")
    edit_header(hang, rb"TransformMatrix = .*", b"TransformMatrix = 1e308 1e308 1e308 1e308 1e308")
    script = (
        "import sys\n"
        "from napari_lightm.io import ImageReadError, read_image\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(path)\n"
        "    except ImageReadError as err:\n"
        "        print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(crash), str(hang)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert "corrupt MetaImage header (NDims = '1000')" in lines[0]
    assert lines[1].startswith(f"{hang}: invalid geometry in the header")


def test_header_larger_than_memory_is_refused_before_reading(tmp_path):
    path = edit_header(
        plain_volume(tmp_path, ".mha"), rb"DimSize = .*", b"DimSize = 100000 100000 100000"
    )
    with pytest.raises(ImageReadError, match="more than this machine's memory"):
        read_image(path)


def test_itk_messages_name_no_object_addresses(tmp_path):
    path = plain_volume(tmp_path, ".nrrd")
    edit_header(path, rb"space origin: .*", b"space origin: (nan,0,0)")
    with pytest.raises(ImageReadError, match="cannot read as NRRD") as err:
        read_image(path)
    assert not re.search(r"0x[0-9a-f]{6,}", str(err.value))


# --- broken files ---------------------------------------------------------------------


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("compress", [False, True])
def test_truncated_volumes_are_refused(tmp_path, suffix, compress):
    import SimpleITK as sitk

    path = tmp_path / f"cut{suffix}"
    image = sitk.GetImageFromArray(
        np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    )
    sitk.WriteImage(image, str(path), compress)
    with pytest.raises(ImageReadError, match="cut") as err:
        read_image(truncate(path))
    assert "\n" not in str(err.value)


def test_gzip_cut_in_the_stream_is_refused(tmp_path):
    """A .nii.gz whose gzip stream ends early (header intact)."""
    noise = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    raw = write_sitk(tmp_path / "whole.nii", noise).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw)[:-100])  # loses the last voxels and the gzip trailer
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(cut)


@pytest.mark.parametrize(
    "name", ["notes.nii", "notes.nii.gz", "notes.nrrd", "notes.mha", "notes.png", "notes.dcm"]
)
def test_text_file_with_image_suffix_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="notes") as err:
        read_image(path)
    assert "\n" not in str(err.value)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nothing.nii")
    (tmp_path / "table.csv").write_text("a,b\n")
    with pytest.raises(ImageReadError, match="unsupported file type .csv"):
        read_image(tmp_path / "table.csv")


def test_can_read_is_cheap_and_honest(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    dicom = tmp_path / "IM0001"
    shutil.copy(pydicom_file("CT_small.dcm"), dicom)
    assert not can_read(tmp_path / "table.csv")
    assert not can_read(tmp_path / "empty")
    assert not can_read(tmp_path / "missing.nii")
    assert can_read(dicom)  # no suffix, DICOM preamble
    assert can_read(tmp_path)  # a folder holding a DICOM file
    assert can_read(tmp_path / "table.nii") is False  # does not exist


def test_numpy_array_files_read_with_unit_spacing(tmp_path):
    array = np.arange(6 * 8, dtype=np.int16).reshape(6, 8)
    np.save(tmp_path / "case.npy", array)
    image, geometry = read_image(tmp_path / "case.npy")
    np.testing.assert_array_equal(image, array)
    assert geometry.spacing == (1.0, 1.0) and geometry.units == "pixel"


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4, 5)), np.array(["a", "b"])])
def test_numpy_array_files_of_the_wrong_kind_are_refused(tmp_path, bad):
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ImageReadError, match=r"bad\.npy: expected a 2D or 3D numeric array"):
        read_image(tmp_path / "bad.npy")
