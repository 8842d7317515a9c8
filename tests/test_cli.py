"""The ``lightm`` command: predict, evaluate, finetune, train, bench; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_lightm import __version__
from napari_lightm.cli import EXIT_BAD_INPUT, main
from napari_lightm.engine import Segmenter
from napari_lightm.io import read_image, write_labels
from napari_lightm.io.phantoms import xray_phantom


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    seg = Segmenter.new(
        2,
        ["background", "right lung", "left lung", "heart"],
        "XR",
        init_filters=8,
        patch_size=(32, 32),
        device="cpu",
    )
    return seg.save(tmp_path_factory.mktemp("model") / "xr.safetensors")


@pytest.fixture(scope="module")
def xray_folder(tmp_path_factory):
    """Two phantom X-rays as MHA (with spacing) and their labels as NRRD."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("xr")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for seed in range(2):
        image, labels, geometry = xray_phantom(seed=seed, size=48)
        sitk.WriteImage(
            geometry.apply_to_sitk(sitk.GetImageFromArray(image)),
            str(root / "images" / f"x{seed}.mha"),
        )
        write_labels(root / "labels" / f"x{seed}.nrrd", labels, geometry)
    return root


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out


def test_predict_a_folder_keeps_the_geometry(model_path, xray_folder, tmp_path, capsys):
    assert (
        main(
            [
                "predict",
                str(model_path),
                str(xray_folder / "images"),
                str(tmp_path),
                "-q",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = sorted(p.name for p in tmp_path.iterdir())
    assert out == ["x0.mha", "x1.mha"]
    labels, geometry = read_image(tmp_path / "x0.mha")
    image, source = read_image(xray_folder / "images" / "x0.mha")
    assert labels.shape == image.shape and geometry.spacing == source.spacing
    assert "[2/2]" in capsys.readouterr().out


def test_predict_precision_is_checked_and_a_no_op_on_the_cpu(model_path, xray_folder, tmp_path,
                                                             capsys):
    src = str(xray_folder / "images" / "x0.mha")
    out = {}
    for precision in ("tf32", "fp32"):
        dst = tmp_path / f"{precision}.mha"
        args = ["predict", str(model_path), src, str(dst), "-q", "--device", "cpu"]
        assert main(args + ["--precision", precision]) == 0
        out[precision] = read_image(dst)[0]
    assert (out["tf32"] == out["fp32"]).all()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(model_path), src, str(tmp_path / "x.mha"), "--precision", "fp16"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "x.mha").exists()


def test_evaluate_writes_csv_and_json(model_path, xray_folder, tmp_path, capsys):
    preds = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(model_path),
                str(xray_folder / "images"),
                str(preds),
                "-q",
                "--suffix",
                ".nrrd",
            ]
        )
        == 0
    )
    stem = tmp_path / "metrics"
    assert (
        main(
            [
                "evaluate",
                str(preds),
                str(xray_folder / "labels"),
                "--out",
                str(stem),
                "--model",
                str(model_path),
            ]
        )
        == 0
    )
    result = json.loads(stem.with_suffix(".json").read_text())
    assert set(result["mean"]) == {"right lung", "left lung", "heart"}
    assert stem.with_suffix(".csv").read_text().startswith("case,class,dice,iou,hd95")


def test_finetune_saves_a_new_version(model_path, xray_folder, tmp_path, capsys):
    out = tmp_path / "v1.safetensors"
    assert (
        main(
            [
                "finetune",
                str(model_path),
                str(xray_folder / "images"),
                str(xray_folder / "labels"),
                str(out),
                "--steps",
                "1",
                "-q",
            ]
        )
        == 0
    )
    assert Segmenter.load(out, device="cpu").version == 1
    assert "version 1" in capsys.readouterr().out


def test_bench_prints_a_timing(capsys):
    assert (
        main(
            [
                "bench",
                "--shape",
                "32,32",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["shape"] == [32, 32] and row["median_ms"] > 0 and row["device"] == "cpu"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{model}", "{missing}", "{tmp}"], "not found"),
        (["predict", "{missing}", "{tmp}", "{tmp}/out"], "no checkpoint file or folder"),
        (["predict", "{model}", "{bad_image}", "{tmp}/o.nii.gz"], "bad.nii.gz"),
        (["train", "{missing}", "{tmp}"], "dataset folder not found"),
        (["evaluate", "{missing}", "{tmp}"], "not found: "),
        (["bench", "--shape", "8,8,8,8"], "2 or 3 sizes"),
        (["predict", "{model}", "{tmp}", "{tmp}/out", "--device", "cuda:7"], "device"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model_path, tmp_path, capsys, argv, message):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    fields = {
        "model": model_path,
        "missing": tmp_path / "missing",
        "tmp": tmp_path,
        "bad_image": bad,
    }
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    assert main([a.format(**fields) for a in argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightm: error:") and len(err.splitlines()) == 1
    assert message in err and "Traceback" not in err


def test_train_on_a_png_folder(tmp_path, capsys):
    import SimpleITK as sitk

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for seed in range(2):
        image, labels, _ = xray_phantom(seed=seed, size=32)
        sitk.WriteImage(
            sitk.GetImageFromArray((image * 255).astype(np.uint8)),
            str(data / "images" / f"p{seed}.png"),
        )
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(data / "labels" / f"p{seed}.png"))
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(data),
                str(out),
                "--steps",
                "1",
                "--init-filters",
                "8",
                "--patch-size",
                "32,32",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    assert "trained 1 steps" in capsys.readouterr().out
    seg = Segmenter.load(out, device="cpu")  # folder -> best.safetensors
    assert seg.spatial_dims == 2 and seg.modality == "XR" and seg.class_names[0] == "background"
