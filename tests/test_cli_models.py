"""``lightm`` as a new user meets it: pretrained models by name, help on every option,
flags (not API names) in messages, nnU-Net file names in ``finetune``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from napari_lightm.cli import EXIT_BAD_INPUT, build_parser, cli_message, main
from napari_lightm.engine import Segmenter
from napari_lightm.io import write_labels
from napari_lightm.io.phantoms import xray_phantom


def test_models_lists_the_pretrained_and_the_users_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    Segmenter.new(2, ["background", "x"], device="cpu", init_filters=8,
                  patch_size=(32, 32)).save(tmp_path / "models" / "mine_v001.safetensors")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cxr-lungs: 2D XR model of right lung, left lung, heart" in out
    assert "mine_v001.safetensors" in out


def test_models_prints_a_card_and_refuses_unknown_names(capsys):
    assert main(["models", "--card", "cxr-lungs"]) == 0
    assert "JSRT" in capsys.readouterr().out
    assert main(["models", "--card", "no-such"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "pretrained: cxr-lungs" in err and len(err.strip().splitlines()) == 1


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a.dest}", a) for a in sub._actions)


def test_every_argument_of_every_command_has_help():
    missing = [name for name, action in _actions(build_parser())
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, f"arguments without help: {missing}"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 2)" in out and "(default: light)" in out  # --batch-size, --config


def test_messages_name_flags_not_api_arguments(tmp_path, capsys):
    assert cli_message("use spatial_dims=2, or max_steps >= 1") == "use --dims 2, or --steps >= 1"
    root = tmp_path / "ds"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    image, labels, geometry = xray_phantom(seed=0, size=32)
    write_labels(root / "images" / "a.nrrd", (image * 100).astype(np.uint8), geometry)
    write_labels(root / "labels" / "a.nrrd", labels, geometry)
    assert main(["train", str(root), str(tmp_path / "run"), "--dims", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--dims 2" in err and "spatial_dims" not in err


def test_finetune_pairs_nnunet_image_names_and_refuses_shipped_targets(tmp_path, capsys):
    from napari_lightm.engine.zoo import ZOO_DIR

    torch.manual_seed(0)
    model = Segmenter.new(2, ["background", "right lung", "left lung", "heart"], "XR",
                          device="cpu", init_filters=8, patch_size=(32, 32))
    model_path = model.save(tmp_path / "m.safetensors")
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    image, labels, geometry = xray_phantom(seed=0, size=32)
    write_labels(tmp_path / "imagesTr" / "case_001_0000.nrrd", (image * 100).astype(np.uint8),
                 geometry)
    write_labels(tmp_path / "labelsTr" / "case_001.nrrd", labels, geometry)
    argv = ["finetune", str(model_path), str(tmp_path / "imagesTr"), str(tmp_path / "labelsTr")]
    assert main([*argv, str(tmp_path / "new.safetensors"), "--steps", "1", "-q"]) == 0
    assert "on 1 image(s)" in capsys.readouterr().out
    assert main([*argv, str(ZOO_DIR / "x.safetensors"), "--steps", "1", "-q"]) == 2
    assert "pretrained models" in capsys.readouterr().err
    assert not (ZOO_DIR / "x.safetensors").exists()


def test_predict_takes_the_model_by_name_or_first_and_says_what_it_needs(tmp_path, capsys):
    assert main(["predict", "a.png", "b.png"]) == EXIT_BAD_INPUT
    assert "MODEL INPUT OUTPUT" in capsys.readouterr().err
    assert main(["predict", "--model", "cxr-lungs", "a", "b", "c"]) == EXIT_BAD_INPUT
    assert "with --model give INPUT and OUTPUT" in capsys.readouterr().err
