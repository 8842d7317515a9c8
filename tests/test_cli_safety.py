"""``lightm`` never overwrites its input, checks every output before any work, and answers
bad arguments, tampered checkpoints and refused writes with one line and exit status 2."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lightm.cli import EXIT_BAD_INPUT, main
from napari_lightm.engine import Segmenter
from napari_lightm.io import Geometry, write_labels


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "a"], "XR", init_filters=8, patch_size=(32, 32),
                        device="cpu")
    return seg.save(tmp_path_factory.mktemp("model") / "m.safetensors")


def write_image(path: Path, seed: int = 0, geometry: Geometry | None = None) -> Path:
    import SimpleITK as sitk

    array = np.random.default_rng(seed).uniform(0, 250, (32, 32)).astype(np.float32)
    if path.suffix == ".png":
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(array)
    if geometry is not None:
        geometry.apply_to_sitk(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def predictions(monkeypatch) -> list:
    """Counts the model's predictions (to show a refusal came before any inference)."""
    calls: list = []
    real = Segmenter.predict

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", counting)
    return calls


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def fails(argv: list, capsys, *needles: str) -> str:
    assert main([str(a) for a in argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightm: error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# --- predict: no output may be an input ------------------------------------------------------


def test_predict_refuses_to_write_over_its_input_file(model_path, tmp_path, capsys, predictions):
    image = write_image(tmp_path / "img.mha")
    before = snapshot(tmp_path)
    fails(["predict", model_path, image, image, "-q"], capsys, "would overwrite the input")
    fails(["predict", model_path, image, tmp_path, "-q"], capsys, "would overwrite the input")
    assert snapshot(tmp_path) == before and predictions == []


def test_predict_refuses_a_folder_into_itself_when_names_collide(model_path, tmp_path, capsys,
                                                                 predictions):
    imgs = tmp_path / "imgs"
    write_image(imgs / "a.mha", 0)
    write_image(imgs / "b.mha", 1)
    before = snapshot(imgs)
    fails(["predict", model_path, imgs, imgs, "-q"], capsys, "would overwrite the input")
    assert snapshot(imgs) == before and predictions == []


def test_predict_into_the_input_folder_with_names_that_cannot_collide(model_path, tmp_path):
    imgs = tmp_path / "imgs"
    write_image(imgs / "a.mha", 0)
    write_image(imgs / "b.mha", 1)
    before = snapshot(imgs)
    assert main(["predict", str(model_path), str(imgs), str(imgs), "--suffix", ".nrrd", "-q"]) == 0
    after = snapshot(imgs)
    assert sorted(after) == ["a.mha", "a.nrrd", "b.mha", "b.nrrd"]
    assert all(after[name] == data for name, data in before.items())


def test_two_inputs_with_one_output_name_are_refused_before_any_work(model_path, tmp_path,
                                                                     capsys, predictions):
    imgs = tmp_path / "imgs"
    write_image(imgs / "a.mha", 0)
    write_image(imgs / "a.png", 1)
    out = tmp_path / "out"
    fails(["predict", model_path, imgs, out, "--suffix", ".nii.gz", "-q"], capsys,
          "would both be written to", "a.nii.gz")
    assert not out.exists() and predictions == []


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_an_output_that_is_the_input_under_another_name_is_refused(model_path, tmp_path, capsys,
                                                                   predictions, link):
    image = write_image(tmp_path / "img.mha")
    alias = tmp_path / "alias.mha"
    (os.link if link == "hard" else os.symlink)(image, alias)
    before = image.read_bytes()
    fails(["predict", model_path, image, alias, "-q"], capsys, "would overwrite the input")
    assert image.read_bytes() == before and predictions == []


def test_an_output_whose_data_file_is_an_input_is_refused(model_path, tmp_path, capsys,
                                                          predictions):
    """MetaImage: writing labels.mhd writes labels.raw too, here the input's data file."""
    import SimpleITK as sitk

    folder = tmp_path / "d"
    write_image(folder / "scan.mhd")
    header = (folder / "scan.mhd").read_text()
    (folder / "scan.raw").rename(folder / "labels.raw")
    (folder / "scan.mhd").write_text(header.replace("scan.raw", "labels.raw"))
    assert sitk.ReadImage(str(folder / "scan.mhd")).GetSize() == (32, 32)
    before = snapshot(folder)
    fails(["predict", model_path, folder / "scan.mhd", folder / "labels.mhd", "-q"], capsys,
          "labels.raw would overwrite the input")
    assert snapshot(folder) == before and predictions == []


def test_an_output_that_is_no_labels_file_is_refused_before_any_work(model_path, tmp_path,
                                                                      capsys, predictions):
    image = write_image(tmp_path / "img.mha")
    fails(["predict", model_path, image, tmp_path / "labels.txt", "-q"], capsys,
          "cannot write labels to", "labels.txt")
    assert predictions == []


# --- writes the disk refuses --------------------------------------------------------------


def test_a_full_disk_while_predicting_is_one_line(model_path, tmp_path, capsys, monkeypatch):
    import napari_lightm.io as io

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(io, "write_labels", full)
    image = write_image(tmp_path / "img.mha")
    fails(["predict", model_path, image, tmp_path / "out.nii.gz", "-q"], capsys,
          "cannot write", "out.nii.gz", "No space left on device")


def test_a_read_only_output_folder_is_refused_before_any_work(model_path, tmp_path, capsys,
                                                              monkeypatch, predictions):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    image = write_image(tmp_path / "img.mha")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    fails(["predict", model_path, image, tmp_path / "out" / "l.nii.gz", "-q"], capsys,
          f"cannot write into {tmp_path}", "Read-only file system")
    assert predictions == [] and not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_a_read_only_folder_for_real(model_path, tmp_path, capsys):
    image = write_image(tmp_path / "img.mha")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(["predict", model_path, image, locked / "l.nii.gz", "-q"], capsys,
              "cannot write into")
    finally:
        locked.chmod(0o755)


def test_a_full_disk_while_training_or_fine_tuning_is_one_line(model_path, tmp_path, capsys,
                                                                monkeypatch):
    import napari_lightm.engine.checkpoint as checkpoint

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    images, labels = tmp_path / "data" / "images", tmp_path / "data" / "labels"
    for i in range(2):
        write_image(images / f"x{i}.png", i)
        lab = np.zeros((32, 32), np.uint8)
        lab[8:20, 8:20] = 1
        write_labels(labels / f"x{i}.png", lab)
    fails(["finetune", model_path, images, labels, tmp_path / "v1.safetensors", "--steps", "1",
           "-q"], capsys, "cannot write the fine-tuned model", "No space left on device")
    fails(["train", tmp_path / "data", tmp_path / "run", "--steps", "1", "--init-filters", "8",
           "--patch-size", "32,32", "--device", "cpu", "-q"], capsys,
          "cannot write the training run", "No space left on device")


# --- finetune and train outputs ---------------------------------------------------------------


def test_finetune_refuses_to_write_over_the_model_it_starts_from(model_path, tmp_path, capsys):
    folder_model = Segmenter.load(model_path, device="cpu").save(tmp_path / "m")  # m/model...
    for model, output in ((model_path, model_path), (tmp_path / "m", tmp_path / "m"),
                          (folder_model, tmp_path / "m")):
        before = Path(folder_model if model != model_path else model_path).read_bytes()
        fails(["finetune", model, tmp_path, tmp_path, output, "--steps", "1", "-q"], capsys,
              "is the model being fine-tuned")
        assert Path(folder_model if model != model_path else model_path).read_bytes() == before


def test_train_refuses_the_dataset_folder_and_an_existing_run(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(2):
        write_image(data / "images" / f"x{i}.png", i)
        lab = np.zeros((32, 32), np.uint8)
        lab[8:20, 8:20] = 1
        write_labels(data / "labels" / f"x{i}.png", lab)
    for out in (data, data / "labels"):
        fails(["train", data, out, "--steps", "1"], capsys, "is the dataset's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"an earlier model")
    fails(["train", data, run, "--steps", "1"], capsys, "already holds a training run",
          "--resume")
    assert (run / "best.safetensors").read_bytes() == b"an earlier model"
    (run / "train_state.pt").write_bytes(b"pickle")
    fails(["train", data, run, "--steps", "1", "--resume"], capsys, "never loaded")


# --- arguments and checkpoints ------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--shape", "0,0"], "expected positive sizes"),
        (["bench", "--shape", "32,-8"], "expected positive sizes"),
        (["bench", "--batch", "0"], "expected a positive integer"),
        (["bench", "--repeats", "0"], "expected a positive integer"),
        (["bench", "--warmup", "-1"], "expected an integer >= 0"),
        (["bench", "--classes", "1"], "at least 2 classes"),
        (["train", "d", "o", "--batch-size", "0"], "expected a positive integer"),
        (["train", "d", "o", "--val-every", "-1"], "expected a positive integer"),
        (["train", "d", "o", "--steps", "0"], "expected a positive integer"),
        (["train", "d", "o", "--init-filters", "12"], "multiple of 8"),
        (["train", "d", "o", "--lr", "nan"], "expected a positive number"),
        (["train", "d", "o", "--patch-size", "0,32"], "expected positive sizes"),
        (["predict", "m", "i", "o", "--overlap", "1"], "fraction in [0, 1)"),
        (["finetune", "m", "i", "l", "o", "--seconds", "0"], "expected a positive number"),
    ],
)
def test_bad_numbers_are_refused_by_the_parser(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("metadata", ["[1, 2]", "null", '{"format": "napari-lightm checkpoint"}'])
def test_a_tampered_checkpoint_is_one_line(model_path, tmp_path, capsys, metadata):
    from safetensors.torch import save_file

    state = Segmenter.load(model_path, device="cpu").model.state_dict()
    bad = tmp_path / "bad.safetensors"
    save_file(dict(state), str(bad), metadata={"lightm": metadata})
    image = write_image(tmp_path / "img.mha")
    fails(["predict", bad, image, tmp_path / "o.nii.gz", "-q"], capsys, str(bad))


# --- evaluate -------------------------------------------------------------------------------


def test_evaluate_takes_two_files_and_checks_grids_and_classes(tmp_path, capsys):
    lab = np.zeros((16, 16), np.uint8)
    lab[4:10, 4:10] = 1
    geo = Geometry(spacing=(0.7, 0.7), origin=(5.0, 5.0))
    write_labels(tmp_path / "pred.nii.gz", lab, geo)
    write_labels(tmp_path / "gt.nrrd", lab, geo)
    out = tmp_path / "m"
    assert main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nrrd"),
                 "--out", str(out), "--classes", "background,organ"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["mean"]["organ"]["dice"] == 1.0
    capsys.readouterr()
    write_labels(tmp_path / "pred.nii.gz", lab, Geometry(spacing=(1.4, 1.4), origin=(5.0, 5.0)))
    fails(["evaluate", tmp_path / "pred.nii.gz", tmp_path / "gt.nrrd", "--out", out],
          capsys, "case gt:", "different grids (spacing")
    write_labels(tmp_path / "pred.nii.gz", lab * 2, geo)
    fails(["evaluate", tmp_path / "pred.nii.gz", tmp_path / "gt.nrrd", "--out", out,
           "--classes", "background,organ"], capsys, "prediction has label 2")
    fails(["evaluate", tmp_path / "pred.nii.gz", tmp_path / "gt.nrrd", "--out", out,
           "--classes", "background"], capsys, "at least two distinct")


def test_finetune_refuses_labels_on_another_grid_than_their_image(model_path, tmp_path, capsys):
    geo = Geometry(spacing=(0.5, 0.5))
    write_image(tmp_path / "images" / "x.mha", geometry=geo)
    lab = np.zeros((32, 32), np.uint8)
    lab[8:20, 8:20] = 1
    write_labels(tmp_path / "labels" / "x.nrrd", lab, Geometry(spacing=(0.5, 0.5),
                                                              direction=(1.0, 0, 0, -1.0)))
    fails(["finetune", model_path, tmp_path / "images", tmp_path / "labels",
           tmp_path / "v1.safetensors", "--steps", "1", "-q"], capsys,
          "case x:", "different grids (direction")
    assert not (tmp_path / "v1.safetensors").exists()
