"""The model store: folders from the environment, version numbers from disk, no overwrites."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from napari_lightm.engine import store
from napari_lightm.engine.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def base_seg():
    from napari_lightm.engine import Segmenter

    return Segmenter.new(2, ["background", "liver"], device="cpu", init_filters=8)


def finetuned(seg):
    """What a fine-tuning run returns: a copy, other weights, version + 1, a history entry."""
    import torch

    new = seg.copy()
    with torch.no_grad():
        next(new.model.parameters()).add_(0.5)
    new.version = seg.version + 1
    new.history.append({"kind": "finetune", "from_version": seg.version})
    return new


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folders_follow_the_environment_and_listing_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_LIGHTM_HOME")
    monkeypatch.delenv("NAPARI_LIGHTM_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.lightm_home() == tmp_path / ".napari-lightm"
    assert store.models_dir(create=False) == tmp_path / ".napari-lightm" / "models"
    assert store.recent_models() == [] and store.versions("liver") == {}
    assert store.next_version("liver") == 0
    assert not (tmp_path / ".napari-lightm").exists()
    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(tmp_path / "home"))
    assert store.models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "m"))
    assert store.models_dir() == tmp_path / "m" and (tmp_path / "m").is_dir()


def test_versions_and_next_version_come_from_disk(tmp_path):
    for name in (
        "liver_v000.safetensors",
        "liver_v003.safetensors",
        "liver-2_v009.safetensors",
        "liver_v002_final.safetensors",
        ".liver_v007.1a2b.safetensors",  # a save in progress
        "liver_v008.json",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "liver_v004").mkdir()  # a checkpoint folder
    assert list(store.versions("liver", tmp_path)) == [0, 3, 4]
    assert store.next_version("liver", tmp_path) == 5
    assert store.next_version("liver", tmp_path, at_least=7) == 7
    assert store.next_version("kidney", tmp_path) == 0
    assert store.split_version(Path("liver-2_v009.safetensors")) == ("liver-2", 9)


def test_finetune_after_rollback_saves_a_new_version(tmp_path, base_seg):
    from napari_lightm.engine import Segmenter

    seg0 = base_seg.copy()
    p0 = store.save_version(seg0, "liver", tmp_path)
    p1 = store.save_version(finetuned(seg0), "liver", tmp_path, parent=p0)
    assert (p0.name, p1.name) == ("liver_v000.safetensors", "liver_v001.safetensors")
    before = digest(p1)
    # roll back to v0 and fine-tune again: the result is v1 in memory, v2 on disk
    rolled = Segmenter.load(p0, device="cpu")
    again = finetuned(rolled)
    assert again.version == 1
    p2 = store.save_version(again, "liver", tmp_path, parent=p0)
    assert p2.name == "liver_v002.safetensors" and again.version == 2
    assert digest(p1) == before
    _, meta, _ = load_checkpoint(p2)
    assert meta["version"] == 2
    assert meta["history"][-1] == {
        "kind": "finetune",
        "from_version": 0,
        "saved_as": "liver_v002.safetensors",
        "version": 2,
        "parent_file": "liver_v000.safetensors",
        "parent_version": 0,
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_save_never_replaces_a_file_with_the_free_looking_name(tmp_path, base_seg):
    seg = base_seg.copy()
    seg.version = 1
    user = tmp_path / "liver_v001.safetensors"
    user.write_bytes(b"not ours")
    path = store.save_version(seg, "liver", tmp_path)
    assert path.name == "liver_v002.safetensors" and seg.version == 2
    assert user.read_bytes() == b"not ours"


def test_a_name_taken_during_the_save_moves_to_the_next_number(tmp_path, base_seg, monkeypatch):
    seg = base_seg.copy()
    real_save = type(seg).save

    def save_racing_another_writer(self, path):  # the first save loses its name
        out = real_save(self, path)
        taken = tmp_path / "liver_v000.safetensors"
        if not taken.exists():
            taken.write_bytes(b"another process")
        return out

    monkeypatch.setattr(type(seg), "save", save_racing_another_writer)
    path = store.save_version(seg, "liver", tmp_path)
    assert path.name == "liver_v001.safetensors"
    assert (tmp_path / "liver_v000.safetensors").read_bytes() == b"another process"
    assert load_checkpoint(path)[1]["version"] == 1 == seg.version


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "c:d"])
def test_names_that_cannot_be_file_names_are_refused(tmp_path, base_seg, name):
    with pytest.raises(ValueError, match="model name"):
        store.save_version(base_seg.copy(), name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_the_model_as_it_was(tmp_path, base_seg):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where the folder would go")
    seg = finetuned(base_seg)
    history = [dict(h) for h in seg.history]
    with pytest.raises(OSError):
        store.save_version(seg, "liver", blocker / "models")
    assert seg.version == 1 and seg.history == history


def test_a_full_disk_leaves_no_version_and_keeps_the_model_as_it_was(
    tmp_path, base_seg, monkeypatch
):
    def full_disk(fd):  # a full disk often shows only when the data is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    seg = base_seg.copy()
    with pytest.raises(OSError, match="No space left"):
        store.save_version(seg, "liver", tmp_path)
    assert seg.version == 0
    assert list(tmp_path.iterdir()) == []
