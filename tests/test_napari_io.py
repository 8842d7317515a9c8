"""The npe2 reader, writer and sample data, through the manifest (no Qt window needed:
napari's ``ViewerModel`` opens files and samples the way the GUI does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm._napari._reader import get_reader
from napari_lightm._napari._sample_data import ct_sample, xray_sample
from napari_lightm._napari._writer import write_labels
from napari_lightm.io import Geometry, ImageReadError, read_image
from napari_lightm.io.phantoms import CT_CLASSES, XRAY_CLASSES

PLUGIN = "napari-lightm"
OBLIQUE = tuple(Rotation.from_euler("xyz", [10, 20, -30], degrees=True).as_matrix().ravel())


@pytest.fixture
def plugin_manager():
    """npe2's plugin manager with this plugin discovered (napari does that at start-up)."""
    import npe2

    manager = npe2.PluginManager.instance()
    if PLUGIN not in manager:
        manager.discover(include_npe1=False)
    return manager


def nifti(tmp_path: Path, direction=None, name="ct.nii.gz") -> tuple[Path, Geometry]:
    import SimpleITK as sitk

    array = np.random.default_rng(0).integers(-1000, 800, size=(4, 6, 8)).astype(np.int16)
    geometry = Geometry((0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction)
    image = geometry.apply_to_sitk(sitk.GetImageFromArray(array))
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path, geometry


# --- get_reader -----------------------------------------------------------------------


def test_get_reader_returns_none_for_what_it_cannot_read(tmp_path):
    (tmp_path / "table.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "table.csv")) is None
    assert get_reader(str(tmp_path / "missing.nii")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader("bad\0path.nii") is None  # never raises, whatever it is given
    path, _ = nifti(tmp_path)
    assert get_reader([str(path), str(tmp_path / "table.csv")]) is None


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axis-aligned", "oblique"])
def test_reader_layers_carry_geometry(tmp_path, direction):
    path, geometry = nifti(tmp_path, direction)
    reader = get_reader(str(path))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image" and data.shape == (4, 6, 8)
    assert kwargs["name"] == "ct"
    stored = Geometry.from_dict(kwargs["metadata"]["geometry"])
    assert stored.allclose(geometry, atol=1e-5) and stored.source == str(path)
    if direction is None:
        assert kwargs["scale"] == pytest.approx((2.5, 0.9, 0.8))
        assert kwargs["translate"] == pytest.approx((30.0, -20.0, 10.0))
        assert "affine" not in kwargs
    else:
        np.testing.assert_allclose(kwargs["affine"], stored.affine)
        assert "scale" not in kwargs
    assert kwargs["units"] == "mm"
    assert kwargs["contrast_limits"] == (-160.0, 240.0)  # CT (HU) soft-tissue window


def test_reader_function_raises_a_clear_error_for_broken_files(tmp_path):
    bad = tmp_path / "broken.nii"
    bad.write_text("not a NIfTI file")
    reader = get_reader(str(bad))  # the suffix fits, so napari gets a reader ...
    assert reader is not None
    with pytest.raises(ImageReadError, match="broken.nii"):  # ... that explains
        reader(str(bad))


def test_dicom_folder_uses_its_window():
    from pydicom.data import get_testdata_file

    folder = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
    ((data, kwargs, _),) = get_reader(str(folder))(str(folder))
    assert data.shape == (5, 16, 16) and kwargs["name"] == "CT5N"
    assert kwargs["contrast_limits"] == (40 - 200, 40 + 200)  # WindowCenter 40, Width 400


# --- writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axis-aligned", "oblique"])
def test_writer_uses_the_geometry_in_metadata(tmp_path, direction):
    from napari.layers import Labels

    path, _ = nifti(tmp_path, direction)
    image, geometry = read_image(path)
    layer = Labels(np.ones(image.shape, np.uint8), **geometry.layer_kwargs())
    (written,) = write_labels(str(tmp_path / "seg.nrrd"), layer.data, layer._get_state())
    labels, back = read_image(written)
    np.testing.assert_array_equal(labels, layer.data)
    assert back.allclose(geometry, atol=1e-9)


def test_writer_without_metadata_uses_layer_transforms(tmp_path):
    from napari.layers import Labels

    geometry = Geometry((0.5, 0.25), (4.0, 8.0), (0.0, -1.0, 1.0, 0.0))
    kwargs = geometry.layer_kwargs()
    del kwargs["metadata"]
    layer = Labels(np.eye(5, dtype=np.uint8), **kwargs)
    (written,) = write_labels(str(tmp_path / "seg.mha"), layer.data, layer._get_state())
    _, back = read_image(written)
    assert back.allclose(geometry, atol=1e-9)


# --- through napari and npe2 ------------------------------------------------------------


def test_manifest_declares_reader_writer_and_samples(plugin_manager):
    manifest = plugin_manager.get_manifest(PLUGIN)
    contributions = manifest.contributions
    assert {s.key for s in contributions.sample_data} == {"xray", "ct"}
    (writer,) = contributions.writers
    assert list(writer.layer_types) == ["labels"]
    assert {".nii.gz", ".nrrd", ".mha", ".png"} <= set(writer.filename_extensions)
    (reader,) = contributions.readers
    assert reader.accepts_directories
    assert {"*.nii.gz", "*.dcm", "*.png"} <= set(reader.filename_patterns)


def test_napari_opens_files_and_saves_labels_through_the_plugin(tmp_path, plugin_manager):
    import napari
    from napari.components import ViewerModel

    path, geometry = nifti(tmp_path, OBLIQUE)
    viewer = ViewerModel()
    (image_layer,) = viewer.open(str(path), plugin=PLUGIN)
    labels_layer = viewer.add_labels(
        np.zeros(image_layer.data.shape, np.uint8),
        affine=image_layer.affine,
        metadata=dict(image_layer.metadata),
    )
    labels_layer.data[1:3] = 2
    (written,) = napari.save_layers(str(tmp_path / "seg.nii.gz"), [labels_layer], plugin=PLUGIN)
    labels, back = read_image(written)
    np.testing.assert_array_equal(labels, labels_layer.data)
    assert back.allclose(geometry, atol=1e-5)
    with pytest.raises(Exception, match="truncated|not a readable"):
        bad = tmp_path / "cut.nii.gz"
        bad.write_bytes(path.read_bytes()[:60])
        viewer.open(str(bad), plugin=PLUGIN)


@pytest.mark.parametrize(
    ("key", "name", "classes", "ndim"),
    [("xray", "xray phantom", XRAY_CLASSES, 2), ("ct", "ct phantom", CT_CLASSES, 3)],
)
def test_open_sample_gives_image_and_ground_truth(plugin_manager, key, name, classes, ndim):
    from napari.components import ViewerModel

    viewer = ViewerModel()
    viewer.open_sample(PLUGIN, key)
    image, truth = viewer.layers
    assert (image.name, truth.name) == (name, f"{name} ground truth")
    assert type(image).__name__ == "Image" and type(truth).__name__ == "Labels"
    assert image.data.ndim == ndim and truth.data.shape == image.data.shape
    assert truth.data.dtype == np.uint8
    assert set(np.unique(truth.data)) == set(range(len(classes)))
    assert truth.metadata["class_names"] == classes
    np.testing.assert_allclose(truth.scale, image.scale)
    assert Geometry.from_dict(truth.metadata["geometry"]).scale == tuple(image.scale)


def test_sample_callables_directly():
    ((xr, xr_kwargs, xr_kind), (_, _, lab_kind)) = xray_sample()
    assert (xr.shape, xr_kind, lab_kind) == ((512, 512), "image", "labels")
    assert xr_kwargs["metadata"]["geometry"]["modality"] == "XR"
    ((ct, ct_kwargs, _), _) = ct_sample()
    assert ct.shape == (48, 160, 160) and ct_kwargs["contrast_limits"] == (-160.0, 240.0)
