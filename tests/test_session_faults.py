"""Session folders under faults: kills mid-save, failed writes, foreign and tampered files.

A save must leave the folder readable as the complete old or the complete new session,
touch no file the session does not own, and every bad file must read as one SessionError.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _session_child import images, model_bytes, save_generation
from napari_lightm.io.session import (
    PENDING_FILE,
    SESSION_FILE,
    SessionError,
    read_session,
    write_session,
)

SRC = Path(__file__).resolve().parents[1] / "src"
CHILD = Path(__file__).with_name("_session_child.py")  # the process the kill test kills


def assert_generation(folder: Path, generation: int | None = None) -> int:
    """Read ``folder`` and check it is one complete generation; returns its number."""
    back, model = read_session(folder)
    found = model.version if generation is None else generation
    assert model.version == found and model.name == f"gen{found}"
    assert model.checkpoint.read_bytes() == model_bytes(found)
    for got, want in zip(back, images(found), strict=True):
        assert got.name == want.name
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.reviewed, want.reviewed)
        np.testing.assert_array_equal(got.image, want.image)
    return found


def manifest_files(folder: Path) -> set[str]:
    return set(json.loads((folder / SESSION_FILE).read_text())["files"])


# --- kills ----------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_during_save_leaves_old_or_new_session(tmp_path):
    folder = tmp_path / "session"
    save_generation(folder, 0)
    (folder / "notes.txt").write_text("the user's")
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    rng = np.random.default_rng(0)
    generation, seen_new = 0, 0
    for _ in range(20):  # the child saves without a pause: every kill lands inside a save
        child = subprocess.Popen(
            [sys.executable, str(CHILD), str(folder), str(generation)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout.readline().strip() == b"ready", child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))  # a save takes ~0.1 s
        child.kill()
        child.wait()
        found = assert_generation(folder)
        assert found >= generation
        seen_new += found > generation
        generation = found
    assert seen_new >= 3, "the child never finished a save: the kills came too early"
    # the next save clears what killed saves left, and only that
    save_generation(folder, generation + 1)
    assert_generation(folder, generation + 1)
    left = {p.name for p in folder.iterdir()}
    assert left == manifest_files(folder) | {SESSION_FILE, "notes.txt"}
    assert (folder / "notes.txt").read_text() == "the user's"


# --- failed and interrupted saves -----------------------------------------------------
@pytest.mark.parametrize(
    "fail",
    [OSError(28, "No space left on device"), KeyboardInterrupt()],
    ids=["full-disk", "interrupt"],
)
def test_failed_save_keeps_the_old_session_and_removes_its_files(tmp_path, fail):
    folder = tmp_path / "s"
    save_generation(folder, 1)
    (folder / "notes.txt").write_text("the user's")
    with pytest.raises(type(fail)):
        save_generation(folder, 2, fail=fail)  # fails after the new arrays are written
    assert_generation(folder, 1)
    left = {p.name for p in folder.iterdir()}
    assert left == manifest_files(folder) | {SESSION_FILE, "notes.txt"}


def test_next_save_removes_what_a_killed_save_listed_and_nothing_else(tmp_path):
    folder = tmp_path / "s"
    save_generation(folder, 1)
    # what a save killed before its commit leaves: its pending list, arrays, temporaries
    orphans = ["labels_00-dead0001.npy", ".labels_00-dead0001.npy.x1y2z3.tmp"]
    user = ["labels_00-cafe0002.npy", ".labels_00-cafe0002.npy.x1y2z3.tmp", "..hidden"]
    for name in orphans + user:
        (folder / name).write_bytes(b"x")
    pending = {"format": "napari-lightm session pending", "files": [orphans[0], "../up.npy"]}
    (folder / PENDING_FILE).write_text(json.dumps(pending))
    (tmp_path / "up.npy").write_bytes(b"outside")
    save_generation(folder, 2)
    assert_generation(folder, 2)
    assert {p.name for p in folder.iterdir()} == manifest_files(folder) | {SESSION_FILE, *user}
    assert (tmp_path / "up.npy").read_bytes() == b"outside"


def test_resave_deletes_only_the_old_sessions_files(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    user = {
        "model_v2_final.safetensors": b"the user's model",
        "model_v001.safetensors": b"another of the user's",
        "labels_00.npy": b"the user's labels",
        "notes.txt": b"notes",
    }
    for name, data in user.items():
        (folder / name).write_bytes(data)
    save_generation(folder, 1)
    first = manifest_files(folder)
    save_generation(folder, 2)
    assert_generation(folder, 2)
    assert not first & manifest_files(folder), "a new save reuses no file name"
    assert {p.name for p in folder.iterdir()} == manifest_files(folder) | {SESSION_FILE, *user}
    for name, data in user.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / PENDING_FILE).exists()


def test_resave_keeps_the_manifest_and_outside_files_a_tampered_list_names(tmp_path):
    folder = tmp_path / "s"
    save_generation(folder, 1)
    doc = json.loads((folder / SESSION_FILE).read_text())
    doc["files"] += [SESSION_FILE, "../outside.txt", str(tmp_path / "outside.txt")]
    (folder / SESSION_FILE).write_text(json.dumps(doc))
    (tmp_path / "outside.txt").write_text("not in the session")
    save_generation(folder, 2)
    assert_generation(folder, 2)
    assert (tmp_path / "outside.txt").read_text() == "not in the session"


def test_resave_over_a_version_1_session_replaces_its_files(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.save(folder / "labels_00.npy", labels)
    np.save(folder / "reviewed_00.npy", np.ones(1, bool))
    (folder / "model_v001.safetensors").write_bytes(b"v1 weights")
    (folder / "model_v001.json").write_text(json.dumps({"format": "napari-lightm checkpoint"}))
    (folder / "model_v2_final.safetensors").write_bytes(b"the user's")
    doc = {
        "format": "napari-lightm session",
        "format_version": 1,
        "images": [
            {"name": "a", "labels_file": "labels_00.npy", "reviewed_file": "reviewed_00.npy"}
        ],
        "model": {"name": "m", "version": 1, "checkpoint": "model_v001.safetensors"},
    }
    (folder / SESSION_FILE).write_text(json.dumps(doc))
    (back,), model = read_session(folder)
    np.testing.assert_array_equal(back.labels, labels)
    assert model.version == 1 and model.checkpoint.name == "model_v001.safetensors"

    save_generation(folder, 2)
    assert_generation(folder, 2)
    left = {p.name for p in folder.iterdir()}
    assert left == manifest_files(folder) | {SESSION_FILE, "model_v2_final.safetensors"}


def test_saving_into_a_folder_with_a_foreign_session_json_is_refused(tmp_path):
    (tmp_path / SESSION_FILE).write_text('{"app": "another tool"}')
    with pytest.raises(SessionError, match="not a napari-lightm session"):
        save_generation(tmp_path, 1)
    assert (tmp_path / SESSION_FILE).read_text() == '{"app": "another tool"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [SESSION_FILE]


def test_real_model_is_saved_and_replaced_with_the_session(tmp_path):
    from napari_lightm.engine import Segmenter

    seg = Segmenter.new(2, ["background", "liver"], device="cpu", init_filters=8)
    folder = tmp_path / "s"
    write_session(folder, images(0, (1, 8, 8))[:1], seg, "liver")
    seg.version = 4
    write_session(folder, images(0, (1, 8, 8))[:1], seg, "liver")
    _, model = read_session(folder)
    assert model.version == 4 and model.name == "liver"
    assert Segmenter.load(model.checkpoint, device="cpu").version == 4
    # one checkpoint (and whatever the checkpoint writer puts beside it) per session
    assert {p.name for p in folder.iterdir()} == manifest_files(folder) | {SESSION_FILE}
    assert len(list(folder.glob("*.safetensors"))) == 1


# --- unreadable and tampered files ----------------------------------------------------
@pytest.mark.parametrize("keep", [0, 5, 60, -100], ids=["empty", "magic", "header", "data"])
def test_truncated_array_is_a_session_error(tmp_path, keep):
    manifest = save_generation(tmp_path, 1)
    path = tmp_path / json.loads(manifest.read_text())["images"][1]["image_file"]
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(SessionError, match="image file .* unreadable or truncated") as err:
        read_session(tmp_path)
    assert "\n" not in str(err.value)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/nonexistent-dir/unpickled"),))


@pytest.mark.parametrize("kind", ["pickle", "npz", "object", "text"])
def test_array_files_that_are_not_plain_arrays_are_refused(tmp_path, kind):
    manifest = save_generation(tmp_path, 1)
    path = tmp_path / json.loads(manifest.read_text())["images"][0]["labels_file"]
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload()))
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, labels=np.zeros((16, 96, 96), np.uint8))
    elif kind == "object":
        with open(path, "wb") as f:
            np.save(f, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    else:
        path.write_text("not an array")
    with pytest.raises(SessionError, match="labels file"):
        read_session(tmp_path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["images"][0].update(labels_file="../outside.npy"), "outside the session"),
        (lambda d: d["images"][0].update(labels_file="/etc/passwd"), "outside the session"),
        (lambda d: d["images"][0].update(image_file="sub/x.npy"), "outside the session"),
        (lambda d: d["model"].update(checkpoint="../weights.safetensors"), "outside the session"),
        (lambda d: d["images"][0].update(labels_file=7), "file name is missing"),
        (lambda d: d.update(images={"a": 1}), "must be a list"),
        (lambda d: d["images"].append("x"), "not an object"),
        (lambda d: d["images"][0].update(name=3), "'name' must be a string"),
        (lambda d: d["images"][0].update(geometry=[1, 2]), "'geometry' must be an object"),
        (lambda d: d["images"][0].update(layer={"scale": ["a"]}), "list of numbers"),
        (lambda d: d["model"].update(version="3"), "'version' must be a whole number"),
        (lambda d: d.update(format_version=99), "update the package"),
        (lambda d: d["images"][0].update(reviewed_file=d["images"][0]["image_file"]), "reviewed"),
        (lambda d: d["images"][0].update(labels_file=d["images"][1]["reviewed_file"]), "2D or 3D"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "subfolder",
        "model-dotdot",
        "name-not-str",
        "images-not-list",
        "entry-not-object",
        "image-name",
        "geometry",
        "layer-scale",
        "model-version",
        "newer-format",
        "reviewed-dtype",
        "labels-1d",
    ],
)
def test_tampered_manifest_is_a_session_error(tmp_path, edit, message):
    folder = tmp_path / "s"
    save_generation(folder, 1)
    np.save(tmp_path / "outside.npy", np.zeros((16, 96, 96), np.uint8))
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    doc = json.loads((folder / SESSION_FILE).read_text())
    edit(doc)
    (folder / SESSION_FILE).write_text(json.dumps(doc))
    with pytest.raises(SessionError, match=message) as err:
        read_session(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["[]", '"session"', "{bad", "\udcff"], ids=repr)
def test_manifest_that_is_not_a_session_object_is_a_session_error(tmp_path, text):
    (tmp_path / SESSION_FILE).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(SessionError):
        read_session(tmp_path)
