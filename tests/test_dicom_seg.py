"""DICOM-SEG: labels of a DICOM series written with highdicom, read back voxel for voxel on
the source grid; the CLI's ``.dcm`` output and napari's writer and reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm.io import (
    Geometry,
    ImageReadError,
    LabelWriteError,
    read_dicom_seg,
    read_image,
    write_labels,
)

OBLIQUE = tuple(Rotation.from_euler("xyz", [15, -25, 40], degrees=True).as_matrix().ravel())
DIRECTIONS = {"axial": None, "oblique": OBLIQUE}
CLASSES = ["background", "liver", "spine", "left lung"]
SHAPE = (8, 32, 32)
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    direction: tuple[float, ...] | None = None,
    spacing: tuple[float, float, float] = (0.7, 0.8, 2.5),
    origin: tuple[float, float, float] = (-50.0, -60.0, 10.0),
) -> list[Path]:
    """A CT series as a scanner writes one: one study, series and frame of reference for
    every slice (which DICOM-SEG needs; ``test_readers.write_dicom_series`` goes through
    ITK, whose writer gives each slice its own study), files named in reverse order so
    the slices must be sorted by position. Returns the files, slice 0 first."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rot = np.eye(3) if direction is None else np.reshape(direction, (3, 3))
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Phantom^CT",
            "PHANTOM1",
            "",
            "O",
        )
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "test"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in rot[:, :2].T.ravel()]
        position = np.asarray(origin) + rot[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (plane.astype(np.int16) + 1024).astype(np.int16).tobytes()
        path = folder / f"im{len(hu) - k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def phantom_labels(shape=SHAPE) -> np.ndarray:
    """Liver (1) on slices 2-4, left lung (3) on slices 4-5; spine (2) nowhere."""
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 5:10, 5:12] = 1
    labels[4:6, 20:25, 3:9] = 3
    return labels


@pytest.fixture(params=list(DIRECTIONS))
def series(request, tmp_path) -> tuple[Path, np.ndarray, Geometry, list[Path]]:
    """``(folder, image, geometry, files)`` of an 8 x 32 x 32 CT series."""
    hu = np.random.default_rng(0).integers(-1000, 1000, SHAPE).astype(np.int16)
    folder = tmp_path / "ct"
    files = write_ct_series(folder, hu, DIRECTIONS[request.param])
    image, geometry = read_image(folder)
    return folder, image, geometry, files


@pytest.fixture
def oblique_series(tmp_path) -> tuple[Path, np.ndarray, Geometry, list[Path]]:
    hu = np.random.default_rng(1).integers(-1000, 1000, SHAPE).astype(np.int16)
    files = write_ct_series(tmp_path / "ct", hu, OBLIQUE)
    return (tmp_path / "ct", *read_image(tmp_path / "ct"), files)


# --- round trip and the file's content ---------------------------------------------------


def test_dicom_seg_reads_back_identical_voxels(series, tmp_path):
    folder, image, geometry, _ = series
    labels = phantom_labels()
    written = write_labels(tmp_path / "seg.dcm", labels, geometry, class_names=CLASSES)
    for reference in (geometry, folder):  # the image's geometry, or its series folder
        back = read_dicom_seg(written, reference)
        np.testing.assert_array_equal(back.labels, labels)
        assert back.labels.dtype == np.uint8
        assert back.class_names == CLASSES
        assert back.geometry.allclose(geometry, atol=1e-9)


def test_dicom_seg_references_the_series_and_stores_present_frames_only(oblique_series, tmp_path):
    import highdicom as hd
    import pydicom

    _, _, geometry, files = oblique_series
    labels = phantom_labels()
    path = write_labels(tmp_path / "seg.dcm", labels, geometry, class_names=CLASSES)
    seg = hd.seg.segread(path)  # highdicom's own checks of the IOD
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert seg.SOPClassUID == SEG_STORAGE and seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.PatientID == "PHANTOM1"
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == geometry.extra["series_uid"]
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in sources
    }
    # one segment per class, numbered by class index, with names, codes and colours
    segments = list(seg.SegmentSequence)
    assert [s.SegmentNumber for s in segments] == [1, 2, 3]
    assert [s.SegmentLabel for s in segments] == CLASSES[1:]
    assert segments[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    assert {s.SegmentAlgorithmType for s in segments} == {"AUTOMATIC"}
    assert all(len(s.RecommendedDisplayCIELabValue) == 3 for s in segments)
    # frames only where a class is present: liver on 3 slices, lung on 2, spine on none
    assert seg.NumberOfFrames == 5
    frames = seg.pixel_array.reshape(5, -1)
    assert np.all(frames.any(axis=1))
    # each frame points at the source instance of its slice and sits where it does
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in orientation.ImageOrientationPatient],
        [float(v) for v in sources[0].ImageOrientationPatient],
        atol=1e-6,
    )
    by_uid = {s.SOPInstanceUID: k for k, s in enumerate(sources)}
    found = set()
    for frame, item in zip(seg.pixel_array, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[uid]
        np.testing.assert_array_equal(frame, labels[k] == number)
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in sources[k].ImagePositionPatient],
            atol=1e-4,
        )
        found.add((number, k))
    assert found == {(1, 2), (1, 3), (1, 4), (3, 4), (3, 5)}


def test_dicom_seg_frames_are_placed_in_patient_space(oblique_series, tmp_path):
    """Without the source files, the SEG's own frame positions put each of its voxels at
    the physical point (LPS) of the image voxel it labels."""
    import highdicom as hd

    _, _, geometry, _ = oblique_series
    labels = phantom_labels()
    path = write_labels(tmp_path / "seg.dcm", labels, geometry, class_names=CLASSES)
    volume = hd.seg.segread(path).get_volume(combine_segments=True)
    index = np.indices(volume.shape).reshape(3, -1)
    points = volume.affine[:3, :3] @ index + volume.affine[:3, 3:]
    # physical (x, y, z) -> image voxel (column, row, slice) by the image's geometry
    physical = geometry.direction_matrix @ np.diag(geometry.spacing)
    voxel = np.linalg.solve(physical, points - np.asarray(geometry.origin)[:, None])
    np.testing.assert_allclose(voxel, np.round(voxel), atol=1e-3)
    col, row, slc = np.round(voxel).astype(int)
    assert slc.min() >= 0 and slc.max() < SHAPE[0]
    np.testing.assert_array_equal(volume.array.reshape(-1), labels[slc, row, col])
    assert np.count_nonzero(volume.array) == np.count_nonzero(labels)


def test_real_ct_series_round_trip(tmp_path):
    """pydicom's CT5N test series (real scanner headers)."""
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
    image, geometry = read_image(folder)
    labels = (image > np.median(image)).astype(np.uint8)
    path = write_labels(tmp_path / "ct5n.dcm", labels, geometry, class_names=["background", "bone"])
    np.testing.assert_array_equal(read_dicom_seg(path, folder).labels, labels)


def test_single_dicom_slice_round_trip(tmp_path):
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("CT_small.dcm"))
    image, geometry = read_image(source)
    labels = (image > np.median(image)).astype(np.uint8)
    path = write_labels(tmp_path / "slice.dcm", labels, geometry)
    back = read_dicom_seg(path, source)
    assert back.labels.shape == image.shape == (128, 128)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.class_names == ["background", "class 1"]  # no names given


def test_enhanced_multiframe_ct_round_trip(tmp_path):
    """One multi-frame file whose frames the reader sorts: each labels slice goes to the
    frame it came from."""
    import pydicom
    from pydicom.uid import generate_uid

    from test_readers import write_enhanced_ct

    hu = np.random.default_rng(2).integers(-1000, 1000, (5, 12, 10)).astype(np.int16)
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, [10.0, 2.5, 5.0, 0.0, 7.5])
    ds = pydicom.dcmread(path)  # the patient and study a scanner would have written
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "P^Q", "P1", "", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "", "", "", ""
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.save_as(path)
    image, geometry = read_image(path)
    labels = np.zeros(image.shape, np.uint8)
    labels[0, :3, :3] = 1  # the frame at z = 0: the file's 4th frame
    labels[3, 5:, 5:] = 2
    written = write_labels(tmp_path / "seg.dcm", labels, geometry)
    np.testing.assert_array_equal(read_dicom_seg(written, path).labels, labels)
    import highdicom as hd

    first = hd.seg.segread(written).PerFrameFunctionalGroupsSequence[0]
    assert first.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber == 4


def test_organ_names_get_snomed_codes():
    from pydicom.sr.codedict import codes

    from napari_lightm.io._seg_codes import ORGAN_CODES, segment_codes

    for keyword in ORGAN_CODES.values():
        assert getattr(codes.SCT, keyword).scheme_designator == "SCT"
    assert segment_codes("Right lung")[1] == codes.SCT.Lung
    assert segment_codes("kidneys")[1] == codes.SCT.Kidney
    assert segment_codes("tumour") == (codes.SCT.Tissue, codes.SCT.Tissue)


def test_unnamed_classes_are_numbered_and_empty_labels_round_trip(oblique_series, tmp_path):
    _, _, geometry, _ = oblique_series
    labels = phantom_labels()
    back = read_dicom_seg(write_labels(tmp_path / "a.dcm", labels, geometry), geometry)
    assert back.class_names == ["background", "class 1", "class 2", "class 3"]
    np.testing.assert_array_equal(back.labels, labels)
    empty = np.zeros(SHAPE, np.uint8)
    back = read_dicom_seg(
        write_labels(tmp_path / "b.dcm", empty, geometry, class_names=CLASSES), geometry
    )
    np.testing.assert_array_equal(back.labels, empty)


def test_colours_and_algorithm_type_are_stored(oblique_series, tmp_path):
    import highdicom as hd

    _, _, geometry, _ = oblique_series
    colours = [None, (1.0, 0.0, 0.0), (0.0, 0.5, 1.0), (0.2, 0.8, 0.2, 1.0)]
    path = write_labels(
        tmp_path / "seg.dcm",
        phantom_labels(),
        geometry,
        class_names=CLASSES,
        colours=colours,
        algorithm_type="SEMIAUTOMATIC",
    )
    seg = hd.seg.segread(path)
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"SEMIAUTOMATIC"}
    back = read_dicom_seg(path, geometry)
    for want, got in zip(colours[1:], back.colours[1:], strict=True):
        np.testing.assert_allclose(got, want[:3], atol=2 / 255)


# --- refusals ------------------------------------------------------------------------------


def test_labels_of_a_non_dicom_image_are_refused_saying_what_to_use(tmp_path):
    import SimpleITK as sitk

    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(SHAPE, np.int16)), str(nifti))
    _, geometry = read_image(nifti)
    for grid in (geometry, None):
        with pytest.raises(LabelWriteError, match=r"did not come from a DICOM series.*\.nii\.gz"):
            write_labels(tmp_path / "seg.dcm", phantom_labels(), grid, class_names=CLASSES)
    assert not (tmp_path / "seg.dcm").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("more classes", r"hold class 3 but only 2 classes are named \(liver, spine\)"),
        ("files gone", r"source DICOM .* is gone"),
        ("files replaced", r"no longer holds the DICOM series"),
        ("other shape", r"shape \(8, 32, 31\) do not fit"),
    ],
)
def test_refused_writes_leave_the_previous_file(oblique_series, tmp_path, change, message):
    folder, _, geometry, _ = oblique_series
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"previous")
    labels, names = phantom_labels(), CLASSES
    if change == "more classes":
        names = CLASSES[:3]
    elif change == "files gone":
        folder.rename(tmp_path / "moved")
    elif change == "files replaced":
        shutil.rmtree(folder)
        write_ct_series(folder, np.zeros(SHAPE, np.int16), OBLIQUE)  # a new series UID
    else:
        labels = labels[..., :31]
    with pytest.raises(LabelWriteError, match=message):
        write_labels(target, labels, geometry, class_names=names)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_seg_is_read_only_onto_its_own_series(oblique_series, tmp_path):
    _, _, geometry, _ = oblique_series
    path = write_labels(tmp_path / "seg.dcm", phantom_labels(), geometry, class_names=CLASSES)
    other = tmp_path / "other"
    write_ct_series(other, np.zeros(SHAPE, np.int16), OBLIQUE)
    with pytest.raises(ImageReadError, match="made on series"):
        read_dicom_seg(path, other)
    with pytest.raises(ImageReadError, match="not a DICOM segmentation"):
        read_dicom_seg(sorted(other.iterdir())[0], geometry)


def test_overlapping_segments_of_other_tools_read_with_a_warning(oblique_series, tmp_path):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    _, _, geometry, files = oblique_series
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    stacked = np.zeros((*SHAPE, 2), np.uint8)
    stacked[2:4, 4:10, 4:10, 0] = 1
    stacked[3:5, 6:12, 6:12, 1] = 1  # overlaps segment 1 on slice 3
    descriptions = [
        hd.seg.SegmentDescription(k, f"s{k}", codes.SCT.Tissue, codes.SCT.Tissue, "MANUAL")
        for k in (1, 2)
    ]
    seg = hd.seg.Segmentation(
        sources, stacked, "BINARY", descriptions, hd.UID(), 1, hd.UID(), 1, "x", "x", "1", "1"
    )
    seg.save_as(tmp_path / "overlap.dcm")
    back = read_dicom_seg(tmp_path / "overlap.dcm", geometry)
    assert back.labels[3, 8, 8] == 2 and back.labels[2, 5, 5] == 1
    assert any("overlap" in w for w in back.geometry.extra["warnings"])


# --- lightm predict ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory) -> Path:
    import torch

    from napari_lightm.engine import Segmenter

    torch.manual_seed(0)
    seg = Segmenter.new(3, CLASSES, "CT", init_filters=8, patch_size=(8, 32, 32), device="cpu")
    return seg.save(tmp_path_factory.mktemp("model") / "ct.safetensors")


def test_predict_plans_one_dicom_seg_for_a_series_of_dcm_files(oblique_series, tmp_path):
    """A folder of ``.dcm`` slices is one series (one output), not a folder of images."""
    from napari_lightm.cli.predict import plan_predict

    folder, _, _, files = oblique_series
    jobs, inputs = plan_predict(folder, tmp_path / "out.dcm", None)
    assert jobs == [(folder, tmp_path / "out.dcm")]
    assert sorted(inputs) == sorted(files)
    jobs, _ = plan_predict(folder, tmp_path, ".dcm")
    assert jobs == [(folder, tmp_path / "ct.dcm")]
    jobs, _ = plan_predict(folder, tmp_path, None)  # DICOM-SEG only when asked
    assert jobs == [(folder, tmp_path / "ct.nii.gz")]


@pytest.mark.slow
def test_predict_writes_a_dicom_seg_of_a_series_folder(ct_model, oblique_series, tmp_path):
    import highdicom as hd

    from napari_lightm.cli import main

    folder, _, geometry, _ = oblique_series
    options = ["-q", "--device", "cpu"]
    assert (
        main(["predict", str(ct_model), str(folder), str(tmp_path), "--suffix", ".dcm", *options])
        == 0
    )
    assert main(["predict", str(ct_model), str(folder), str(tmp_path / "ct.nii.gz"), *options]) == 0
    seg = hd.seg.segread(tmp_path / "ct.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == CLASSES[1:]  # the model's classes
    reference, _ = read_image(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(read_dicom_seg(tmp_path / "ct.dcm", geometry).labels, reference)


def test_predict_refuses_dicom_seg_of_a_non_dicom_image_before_running(ct_model, tmp_path, capsys):
    import SimpleITK as sitk

    from napari_lightm.cli import EXIT_BAD_INPUT, main

    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(SHAPE, np.int16)), str(nifti))
    code = main(["predict", str(ct_model), str(nifti), str(tmp_path / "out.dcm"), "-q"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "not a DICOM image or series; use .nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.dcm").exists()


# --- napari --------------------------------------------------------------------------------

PLUGIN = "napari-lightm"


@pytest.fixture
def plugin_manager():
    import npe2

    manager = npe2.PluginManager.instance()
    if PLUGIN not in manager:
        manager.discover(include_npe1=False)
    return manager


def test_napari_saves_and_opens_a_dicom_seg(plugin_manager, oblique_series, tmp_path):
    """Save a Labels layer through the plugin's writer, open the file again: the series,
    found beside it, gives the grid; names and colours come back."""
    import napari
    from napari.components import ViewerModel
    from napari.layers import Labels

    from napari_lightm._napari.annotation import MARKED_KEY

    folder, image, geometry, _ = oblique_series
    viewer = ViewerModel()
    (image_layer,) = viewer.open(str(folder), plugin=PLUGIN)
    metadata = {**image_layer.metadata, "class_names": CLASSES}
    layer = viewer.add_labels(phantom_labels(), affine=image_layer.affine, metadata=metadata)
    layer.metadata[MARKED_KEY] = phantom_labels() == 3  # the user painted the lung
    (written,) = napari.save_layers(str(tmp_path / "seg.dcm"), [layer], plugin=PLUGIN)
    (opened,) = ViewerModel().open(written, plugin=PLUGIN)
    assert isinstance(opened, Labels)
    np.testing.assert_array_equal(opened.data, layer.data)
    np.testing.assert_allclose(opened.affine.affine_matrix, image_layer.affine.affine_matrix)
    assert opened.metadata["class_names"] == CLASSES
    assert Geometry.from_dict(opened.metadata["geometry"]).allclose(geometry, atol=1e-9)
    shown = opened.colormap.map(np.array([1, 2, 3], np.uint8))
    np.testing.assert_allclose(shown, layer.colormap.map(np.array([1, 2, 3], np.uint8)), atol=0.01)
    import highdicom as hd

    assert hd.seg.segread(written).SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_napari_explains_a_seg_whose_series_is_nowhere(plugin_manager, oblique_series, tmp_path):
    from napari.components import ViewerModel

    _, _, geometry, _ = oblique_series
    away = tmp_path / "a" / "b" / "c"
    path = write_labels(away / "seg.dcm", phantom_labels(), geometry, class_names=CLASSES)
    with pytest.raises(Exception, match="open that series first"):
        ViewerModel().open(str(path), plugin=PLUGIN)


def test_napari_refuses_dicom_seg_of_a_nifti_layer(tmp_path):
    from napari.layers import Labels

    from napari_lightm._napari._writer import write_labels as napari_write

    layer = Labels(np.zeros((4, 5, 6), np.uint8), scale=(2.0, 1.0, 1.0))
    with pytest.raises(LabelWriteError, match=r"did not come from a DICOM series.*\.nii\.gz"):
        napari_write(str(tmp_path / "seg.dcm"), layer.data, layer._get_state())


@pytest.mark.gui
@pytest.mark.slow  # the first Qt viewer of a process takes seconds
def test_seg_opens_onto_the_open_image_and_links_to_it(
    oblique_series, tmp_path, make_napari_viewer_proxy
):
    """The series is open in napari and the SEG lies elsewhere: the open image gives the
    grid and the labels link to it by name (the widget adopts them)."""
    from napari_lightm._napari.annotation import IMAGE_KEY

    folder, _, geometry, _ = oblique_series
    path = write_labels(
        tmp_path / "x" / "y" / "z" / "seg.dcm", phantom_labels(), geometry, class_names=CLASSES
    )
    viewer = make_napari_viewer_proxy(show=False)
    (image_layer,) = viewer.open(str(folder), plugin=PLUGIN)
    (labels_layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_array_equal(labels_layer.data, phantom_labels())
    assert labels_layer.metadata[IMAGE_KEY] == image_layer.name


def test_a_seg_is_not_read_as_an_image_nor_as_a_second_series(tmp_path):
    """A SEG saved into its series' folder leaves the folder one series; read alone it is
    refused as an image with a message saying what it is."""
    from napari_lightm.io import ImageReadError, write_labels

    folder = tmp_path / "ct"
    write_ct_series(folder, np.random.default_rng(2).integers(-1000, 1000, SHAPE))
    image, geometry = read_image(folder)
    seg_path = write_labels(folder / "labels.dcm", phantom_labels(), geometry,
                            class_names=["background", "liver", "spine", "left lung"])
    again, geometry2 = read_image(folder)
    np.testing.assert_array_equal(again, image)
    assert not any("series" in w for w in geometry2.extra.get("warnings", []))
    with pytest.raises(ImageReadError, match="DICOM-SEG holds labels"):
        read_image(seg_path)
