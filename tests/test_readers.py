"""read_image: every format with exact geometry, DICOM series and X-rays, and bad input."""

from __future__ import annotations

import gzip
import shutil
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


# --- NaN / inf ------------------------------------------------------------------------


def test_nan_and_inf_voxels_are_replaced_and_reported(tmp_path):
    array = np.linspace(-5, 5, 60, dtype=np.float32).reshape(3, 4, 5)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    image, geometry = read_image(write_sitk(tmp_path / "nan.nrrd", array))
    assert np.isfinite(image).all()
    assert image[0, 0, 0] == array[np.isfinite(array)].min()  # NaN -> lowest
    assert image[0, 0, 1] == np.nanmax(array[np.isfinite(array)])  # +inf -> highest
    assert "3 NaN/inf voxels replaced" in geometry.extra["warnings"][0]
    np.testing.assert_array_equal(image.ravel()[3:], array.ravel()[3:])


def test_all_nan_image_is_refused(tmp_path):
    path = write_sitk(tmp_path / "nan.mha", np.full((2, 3, 4), np.nan, np.float32))
    with pytest.raises(ImageReadError, match="no finite voxel"):
        read_image(path)


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
