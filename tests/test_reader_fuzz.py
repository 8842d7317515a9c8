"""read_image on damaged headers: a finite image with a valid Geometry, or ImageReadError.

Small valid files of every format get header bytes overwritten, header fields replaced
by hostile values (NaN, 0, -1, huge) and files cut short. Whatever comes of it, the
reader must return a finite 2D/3D array with a Geometry that validates, or raise
ImageReadError with one line naming the file: no other exception, no crash, no hang.
Examples are derandomized (the same in every run) and bounded so that the module takes
seconds; ``LIGHTM_FUZZ_EXAMPLES=2000`` runs a longer, random search locally.
"""

from __future__ import annotations

import faulthandler
import gzip
import os
import re
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from napari_lightm.io import Geometry, ImageReadError, read_image

# pydicom and ITK warn about every damaged field they meet; the outcome is what counts.
# numpy's RuntimeWarnings (invalid cast, overflow) would mean garbage voxels: errors.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("error::RuntimeWarning"),
]

LOCAL_SEARCH = os.environ.get("LIGHTM_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(LOCAL_SEARCH or 50),
    deadline=timedelta(seconds=5),
    derandomize=not LOCAL_SEARCH,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# a reader stuck in C code never returns to Python, so hypothesis' deadline cannot stop
# it: a watchdog thread dumps the stacks and ends the process after this long instead
HANG_LIMIT_S = 60

OBLIQUE = tuple(Rotation.from_euler("xyz", [10, -20, 30], degrees=True).as_matrix().ravel())
HOSTILE_VALUES = ["nan", "-nan", "inf", "-inf", "0", "-1", "1e308", "1e-320", "", "x", "1e9"]


@dataclass(frozen=True)
class Sample:
    """A valid file's bytes, how many of them are header, and where its numbers lie
    (shown by name only when hypothesis reports an example)."""

    name: str
    data: bytes
    header: int
    numbers: tuple[tuple[int, int], ...] = ()

    def __repr__(self) -> str:
        return f"<{self.name}: {len(self.data)} bytes>"


def write_sitk(path: Path, array: np.ndarray, geometry: Geometry | None = None) -> bytes:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    if geometry is not None:
        geometry.apply_to_sitk(image)
    sitk.WriteImage(image, str(path), False)
    return path.read_bytes()


def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)


def grid() -> Geometry:
    return Geometry((0.7, 0.8, 2.5), (-10.0, 20.0, 5.5), OBLIQUE)


def assert_image_or_clear_error(path: Path) -> None:
    faulthandler.dump_traceback_later(HANG_LIMIT_S, exit=True, file=sys.__stderr__)
    try:
        image, geometry = read_image(path)
    except ImageReadError as err:
        assert path.name in str(err) and "\n" not in str(err)
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert isinstance(image, np.ndarray) and image.ndim in (2, 3)
    assert image.ndim == geometry.ndim
    assert image.dtype.kind in "biuf" and np.isfinite(image).all()
    Geometry.from_dict(geometry.to_dict())  # validates: finite, positive, orthonormal


# --- damage, drawn as small edit lists and applied outside hypothesis -------------------


@st.composite
def byte_edits(draw, sample: Sample):
    """1-8 header bytes overwritten, and maybe a cut: ``(edits, cut)``."""
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, sample.header - 1), st.integers(0, 255)),
            min_size=1,
            max_size=8,
        )
    )
    cut = draw(st.none() | st.integers(0, len(sample.data) - 1))
    return edits, cut


def apply_byte_edits(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for at, value in edits:
        out[at] = value
    return bytes(out[:cut])


def header_fields(text: str) -> list[int]:
    """Lines of a text header that are ``key = value`` / ``key: value`` fields."""
    return [i for i, ln in enumerate(text.split("\n")) if re.match(r"^[\w ]+\s*[:=]", ln)]


@st.composite
def field_edit(draw, text: str):
    """One field's value replaced by a hostile one, repeated: ``(line, value, repeat)``."""
    return (
        draw(st.sampled_from(header_fields(text))),
        draw(st.sampled_from(HOSTILE_VALUES)),
        draw(st.integers(1, 9)),
    )


def apply_field_edit(text: str, line: int, value: str, repeat: int) -> str:
    lines = text.split("\n")
    key, sep = re.match(r"^([\w ]+?\s*)([:=]=?)", lines[line]).groups()
    lines[line] = f"{key}{sep} {' '.join([value] * repeat)}"
    return "\n".join(lines)


def damaged_text_header(data, sample: Sample) -> bytes:
    """A text-header file (NRRD, MetaImage) with a field or some bytes damaged."""
    head, rest = sample.data[: sample.header], sample.data[sample.header :]
    if data.draw(st.booleans(), label="edit a field"):
        text = head.decode("latin-1")
        return apply_field_edit(text, *data.draw(field_edit(text))).encode("latin-1") + rest
    return apply_byte_edits(sample.data, *data.draw(byte_edits(sample)))


# --- NIfTI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> Sample:
    data = write_sitk(tmp_path_factory.mktemp("nifti") / "base.nii", volume(), grid())
    return Sample("base.nii", data, 352)


@FUZZ
@given(data=st.data())
def test_damaged_nifti_header(tmp_path, nifti, data):
    path = tmp_path / "fuzz.nii"
    path.write_bytes(apply_byte_edits(nifti.data, *data.draw(byte_edits(nifti))))
    assert_image_or_clear_error(path)


@FUZZ
@given(data=st.data())
def test_damaged_nifti_gz_header(tmp_path, nifti, data):
    path = tmp_path / "fuzz.nii.gz"
    damaged = apply_byte_edits(nifti.data, *data.draw(byte_edits(nifti)))
    path.write_bytes(gzip.compress(damaged, mtime=0))
    assert_image_or_clear_error(path)


# --- NRRD and MetaImage (text headers) ------------------------------------------------


def text_sample(path: Path, end: bytes) -> Sample:
    data = write_sitk(path, volume(), grid())
    return Sample(path.name, data, data.index(end) + len(end))


@pytest.fixture(scope="module")
def nrrd(tmp_path_factory) -> Sample:
    return text_sample(tmp_path_factory.mktemp("nrrd") / "base.nrrd", b"\n\n")


@pytest.fixture(scope="module")
def mha(tmp_path_factory) -> Sample:
    path = tmp_path_factory.mktemp("mha") / "base.mha"
    return text_sample(path, b"ElementDataFile = LOCAL\n")


@FUZZ
@given(data=st.data())
def test_damaged_nrrd_header(tmp_path, nrrd, data):
    path = tmp_path / "fuzz.nrrd"
    path.write_bytes(damaged_text_header(data, nrrd))
    assert_image_or_clear_error(path)


@FUZZ
@given(data=st.data())
def test_damaged_mha_header(tmp_path, mha, data):
    path = tmp_path / "fuzz.mha"
    path.write_bytes(damaged_text_header(data, mha))
    assert_image_or_clear_error(path)


@FUZZ
@given(data=st.data())
def test_damaged_mhd_header(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("mhd")
    header = write_sitk(folder / "fuzz.mhd", volume(), grid())
    sample = Sample("fuzz.mhd", header, len(header))
    (folder / "fuzz.mhd").write_bytes(damaged_text_header(data, sample))
    assert_image_or_clear_error(folder / "fuzz.mhd")


# --- DICOM ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dicom() -> Sample:
    """CT_small.dcm from pydicom's test files; its header is what precedes the pixel
    data, its numbers the values of number-as-text elements (DS, IS: spacing, position,
    rescale)."""
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    start = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data tag
    numbers = [  # explicit VR little endian: tag (4 bytes), VR, 2-byte length, value
        (m.end(), int.from_bytes(m.group(2), "little"))
        for m in re.finditer(rb"(DS|IS)(..)", data[:start], flags=re.DOTALL)
    ]
    numbers = tuple((at, n) for at, n in numbers if 0 < n <= 64)
    assert len(numbers) > 20
    return Sample("CT_small.dcm", data, start + 12, numbers)


@st.composite
def number_edit(draw, sample: Sample):
    """One DS/IS value: a character replaced, or the value rewritten as a hostile one."""
    at, n = draw(st.sampled_from(sample.numbers))
    if draw(st.booleans()):
        return [(at + draw(st.integers(0, n - 1)), draw(st.sampled_from(b"\x00-+e.n\\ 9")))]
    text = draw(st.sampled_from(HOSTILE_VALUES)).encode()
    return list(enumerate((text * n)[:n].ljust(n), start=at))


@FUZZ
@given(data=st.data())
def test_damaged_dicom_header(tmp_path, dicom, data):
    path = tmp_path / "fuzz.dcm"
    if data.draw(st.booleans(), label="edit a number"):
        path.write_bytes(apply_byte_edits(dicom.data, data.draw(number_edit(dicom)), None))
    else:
        path.write_bytes(apply_byte_edits(dicom.data, *data.draw(byte_edits(dicom))))
    assert_image_or_clear_error(path)


# --- pictures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Sample:
    picture = np.random.default_rng(0).integers(0, 255, size=(16, 12)).astype(np.uint8)
    data = write_sitk(tmp_path_factory.mktemp("png") / "base.png", picture)
    return Sample("base.png", data, 64)  # signature, IHDR, start of IDAT


@pytest.fixture(scope="module")
def tiff(tmp_path_factory) -> Sample:
    picture = np.random.default_rng(0).integers(0, 4000, size=(16, 12)).astype(np.float32)
    data = write_sitk(tmp_path_factory.mktemp("tif") / "base.tif", picture)
    return Sample("base.tif", data, len(data))  # the IFD may sit anywhere


@FUZZ
@given(data=st.data())
def test_damaged_png_header(tmp_path, png, data):
    path = tmp_path / "fuzz.png"
    path.write_bytes(apply_byte_edits(png.data, *data.draw(byte_edits(png))))
    assert_image_or_clear_error(path)


@FUZZ
@given(data=st.data())
def test_damaged_tiff(tmp_path, tiff, data):
    path = tmp_path / "fuzz.tif"
    path.write_bytes(apply_byte_edits(tiff.data, *data.draw(byte_edits(tiff))))
    assert_image_or_clear_error(path)
