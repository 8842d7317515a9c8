"""Label writes on a full disk or into a folder that cannot take them lose nothing.

A full disk is simulated in a child process with ``RLIMIT_FSIZE`` (and SIGXFSZ ignored,
so that writes past the limit fail with EFBIG instead of killing the process): no root
and no special file system needed. Every failed write must raise LabelWriteError naming
the file, leave the previous file byte for byte, and leave no temporary file behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_lightm
from napari_lightm.io import Geometry, LabelWriteError, read_image, write_labels

# the children import the napari_lightm this test process imported
SRC = Path(napari_lightm.__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX only"
)

# bytes a file may grow to in the child: the label files below are all larger
FILE_SIZE_LIMIT = 1024

# child: limit file sizes, then write each job's labels and report what happened
WRITE_UNDER_LIMIT = """
import json, resource, signal, sys
import numpy as np
from napari_lightm.io import Geometry, write_labels

jobs = json.loads(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
results = {}
for path, shape, zeros in jobs:
    rng = np.random.default_rng(0)
    labels = np.zeros(shape, np.uint8) if zeros else rng.integers(0, 4, shape).astype(np.uint8)
    geometry = Geometry((0.8,) * len(shape), (-5.0,) * len(shape))
    try:
        write_labels(path, labels, geometry)
        results[path] = ["returned", ""]
    except Exception as err:
        results[path] = [type(err).__name__, str(err)]
print(json.dumps(results))
"""


def child_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "NAPARI_LIGHTM_HOME": str(tmp_path / "home"),
        "HOME": str(tmp_path / "home"),
    }


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


FULL_DISK_CASES = {
    # name: (file, labels shape, all zeros)
    "nii": ("labels.nii", (16, 32, 32), False),
    "nii zeros": ("zeros.nii", (16, 32, 32), True),  # voxels a short read also gives
    "nii.gz": ("labels.nii.gz", (16, 32, 32), False),
    "nrrd": ("labels.nrrd", (16, 32, 32), False),
    "mha": ("labels.mha", (16, 32, 32), False),
    "mhd": ("labels.mhd", (16, 32, 32), False),
    "png": ("labels.png", (64, 64), False),
}


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """Every case written once in one child (one interpreter start), each into its own
    folder that already holds an older file (for .mhd, an older .mhd + .raw pair)."""
    root = tmp_path_factory.mktemp("full")
    jobs, before = [], {}
    for name, (file, shape, zeros) in FULL_DISK_CASES.items():
        folder = root / name.replace(" ", "_")
        folder.mkdir()
        old = np.ones(shape[-2:] if file.endswith(".png") else shape[:2] + (3,), np.uint8)
        write_labels(folder / file, old, Geometry.identity(old.ndim))
        before[name] = listing(folder)
        jobs.append([str(folder / file), shape, zeros])
    done = subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_LIMIT, json.dumps(jobs), str(FILE_SIZE_LIMIT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(root),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, before, json.loads(done.stdout.splitlines()[-1]), done.stderr


@pytest.mark.parametrize("name", FULL_DISK_CASES)
def test_full_disk_refuses_the_write_and_keeps_the_old_file(full_disk, name):
    root, before, results, _ = full_disk
    folder = root / name.replace(" ", "_")
    path = folder / FULL_DISK_CASES[name][0]
    kind, message = results[str(path)]
    assert kind == "LabelWriteError", (kind, message)
    assert message.startswith(f"{path}: could not write labels (")
    assert message.endswith("the previous file is unchanged") and "\n" not in message
    assert ".tmp" not in message  # temporary names are gone, so not shown
    assert listing(folder) == before[name]  # old bytes kept, no temporary file left


def test_full_disk_messages_stay_off_the_terminal(full_disk):
    """ITK's NIfTI and MetaImage writers print their own complaint on stderr; it belongs
    in the one-line error, not on the terminal."""
    _, _, results, stderr = full_disk
    assert "NWAD" not in stderr and "M_WriteElementsData" not in stderr
    nii = next(message for path, (_, message) in results.items() if path.endswith("labels.nii"))
    assert "truncated NIfTI file" in nii


def test_write_where_the_folder_is_a_file_keeps_everything(tmp_path):
    blocker = tmp_path / "case"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(LabelWriteError, match="could not write labels") as err:
        write_labels(blocker / "labels.nii.gz", np.ones((3, 4, 5), np.uint8))
    assert str(blocker / "labels.nii.gz") in str(err.value) and "\n" not in str(err.value)
    assert listing(tmp_path) == {"case": b"not a folder"}


def test_write_into_a_read_only_folder_keeps_the_old_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    path = write_labels(folder / "labels.nrrd", np.ones((3, 4, 5), np.uint8))
    before = listing(folder)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes here")
        with pytest.raises(LabelWriteError, match="Permission denied") as err:
            write_labels(path, np.zeros((3, 4, 5), np.uint8))
        assert "the previous file is unchanged" in str(err.value)
    finally:
        folder.chmod(0o755)
    assert listing(folder) == before


# --- the CLI ----------------------------------------------------------------------------

PREDICT_UNDER_LIMIT = """
import resource, signal, sys
from napari_lightm.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_lightm_predict_on_a_full_disk_exits_2_with_one_line(tmp_path):
    from napari_lightm.engine import Segmenter

    model = Segmenter.new(
        2, ["background", "x"], init_filters=8, patch_size=(32, 32), device="cpu"
    ).save(tmp_path / "model.safetensors")
    image = tmp_path / "image.nii.gz"  # one patch
    write_labels(image, np.arange(32 * 32).reshape(32, 32) % 200, Geometry((0.5, 0.5)))
    out = tmp_path / "out.nii"  # uncompressed: 352 + 32 x 32 bytes, past the limit
    write_labels(out, np.ones((32, 32), np.uint8), Geometry((0.5, 0.5)))
    old = out.read_bytes()
    args = ["predict", str(model), str(image), str(out), "-q", "--device", "cpu"]
    # the torch scan: numba's compile cache would be the first write the limit refuses
    env = {**child_env(tmp_path), "LIGHTM_SCAN_BACKEND": "torch"}
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_UNDER_LIMIT, str(FILE_SIZE_LIMIT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lightm: error: {out}: could not write labels (")
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    image_again, _ = read_image(out)
    assert image_again.shape == (32, 32)
