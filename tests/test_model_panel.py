"""Model panel helpers: class names, the model folder, version names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from napari_lightm._napari._model_panel import (
    models_dir,
    parse_class_names,
    recent_models,
    split_version,
)


def test_parse_class_names():
    assert parse_class_names("liver, spine") == ["background", "liver", "spine"]
    assert parse_class_names("background; lung") == ["background", "lung"]
    with pytest.raises(ValueError, match="at least one class"):
        parse_class_names(" , ")
    with pytest.raises(ValueError, match="repeat"):
        parse_class_names("liver, liver")


def test_models_dir_env_override_and_recent_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "m"))
    folder = models_dir()
    assert folder == tmp_path / "m" and folder.is_dir()
    old, new = folder / "a_v001.safetensors", folder / "a_v002.safetensors"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    (folder / "notes.txt").write_text("not a model")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    assert recent_models() == [new, old]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("liver_v003.safetensors", ("liver", 3)),
        ("ct3d-2026_v12", ("ct3d-2026", 12)),
        ("plain.safetensors", ("plain", None)),
    ],
)
def test_split_version(name, expected):
    assert split_version(Path(name)) == expected
