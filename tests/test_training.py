"""Training: loss goes down, checkpoints, resume, cancel, dataset folders, augmentation, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lightm.engine import Cancelled, CancelToken, CheckpointError, Segmenter
from napari_lightm.engine.data import (
    Augmentation,
    Case,
    Dataset,
    DatasetError,
    PatchSampler,
    load_dataset,
)
from napari_lightm.engine.losses import IGNORE
from napari_lightm.engine.train_state import OLD_STATE_FILE, STATE_FILE
from napari_lightm.engine.training import make_optimizer, train, train_step

TINY = {"init_filters": 8}


def disc_case(seed: int, size: int = 32) -> Case:
    """A bright disc (class 1) and a dark square (class 2) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(8, size - 8, 2)
    labels = np.zeros((size, size), np.uint8)
    labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 1
    labels[2:8, 2:8] = 2
    image = (rng.normal(0, 0.2, (size, size)) + labels).astype(np.float32)
    return Case(f"c{seed}", image[None], labels, (1.0, 1.0))


@pytest.fixture
def tiny_dataset() -> Dataset:
    return Dataset([disc_case(s) for s in range(3)], ["background", "disc", "square"], "MR")


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    seg = Segmenter.new(
        2, ["background", "disc", "square"], "MR", patch_size=(32, 32), device="cpu", **TINY
    )
    cases = [disc_case(s) for s in range(2)]
    x = torch.from_numpy(np.stack([c.image for c in cases]))
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(np.stack([c.labels for c in cases])).long()
    opt = make_optimizer(seg.model, 3e-3)
    losses = [train_step(seg.model, opt, x, y) for _ in range(8)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < 0.9 * losses[0], losses


def test_train_writes_checkpoints_and_resume_continues(tiny_dataset, tmp_path):
    kwargs = dict(max_steps=2, batch_size=2, val_every=2, device="cpu", model_kwargs=TINY, seed=3)
    first = train(tiny_dataset, tmp_path, **kwargs)
    assert first.steps == 2 and len(first.losses) == 2 and len(first.val_dice) == 1
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"best.safetensors", "last.safetensors", "train_state.safetensors"}
    seen = []
    second = train(
        tiny_dataset, tmp_path, **{**kwargs, "max_steps": 3}, resume=True, progress=seen.append
    )
    assert [p.done for p in seen if p.stage == "train"] == [2, 3]  # starts after step 2
    assert second.steps == 3 and second.losses[:2] == first.losses and len(second.losses) == 3
    last = Segmenter.load(tmp_path / "last.safetensors", device="cpu")
    assert last.version == 1 and last.history[-1]["steps"] == 3
    assert last.preprocessing.modality == "MR"


def test_resume_after_a_cancel_repeats_the_uninterrupted_run_exactly(tiny_dataset, tmp_path):
    """Weights, optimizer moments, both RNGs and the loss history come back from the
    (pickle-free) state: 2 steps + cancel + resume to 4 = 4 steps in one go."""
    kwargs = dict(max_steps=4, batch_size=2, val_every=2, device="cpu", model_kwargs=TINY, seed=5)
    whole = train(tiny_dataset, tmp_path / "whole", **kwargs)
    token = CancelToken()

    def cancel_at_3(p):
        if p.stage == "train" and p.done == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        train(tiny_dataset, tmp_path / "split", **kwargs, progress=cancel_at_3, cancel=token)
    seen = []
    resumed = train(tiny_dataset, tmp_path / "split", **kwargs, resume=True, progress=seen.append)
    assert seen[0].message.startswith("resumed at step 2")
    assert resumed.losses == whole.losses and resumed.val_dice == whole.val_dice
    assert resumed.best_dice == whole.best_dice
    a, b = whole.segmenter.model.state_dict(), resumed.segmenter.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    """Unpickling this creates ``marker``: what a crafted training state would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_state_is_never_unpickled(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "marker"
    torch.save({"step": 1, "payload": _Payload(marker)}, out / OLD_STATE_FILE)
    with pytest.raises(CheckpointError, match="never loaded") as info:
        train(tiny_dataset, out, max_steps=2, device="cpu", model_kwargs=TINY, resume=True)
    assert not marker.exists(), "the old-format state was unpickled"
    assert len(str(info.value).splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [OLD_STATE_FILE]  # nothing written


def _state_variants(good: Path, other_model: Path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(header["lightm_train_state"])

    def tampered(**changes):
        def write(path):
            save_file(tensors, str(path),
                      metadata={"lightm_train_state": json.dumps({**info, **changes})})
        return write

    def with_tensors(**changes):
        def write(path):
            save_file({**tensors, **changes}, str(path), metadata=header)
        return write

    return {
        "truncated": (lambda p: p.write_bytes(good.read_bytes()[:1000]), "corrupt or unreadable"),
        "a model checkpoint": (lambda p: p.write_bytes(other_model.read_bytes()),
                               "not a napari-lightm training state"),
        "JSON list": (lambda p: save_file(tensors, str(p),
                                          metadata={"lightm_train_state": "[1, 2]"}),
                      "JSON object was expected"),
        "JSON null": (lambda p: save_file(tensors, str(p),
                                          metadata={"lightm_train_state": "null"}),
                      "JSON object was expected"),
        "newer version": (tampered(version=99), "newer napari-lightm"),
        "other classes": (tampered(class_names=["background", "x", "y"]), "another run"),
        "negative step": (tampered(step=-3), "unusable training state"),
        "no optimizer groups": (tampered(optimizer_param_groups=None), "unusable training state"),
        "wrong moment shape": (with_tensors(**{"optimizer.0.exp_avg": torch.zeros(3)}),
                               "unusable training state"),
        "NaN weights": (with_tensors(**{k: torch.full_like(v, float("nan"))
                                        for k, v in tensors.items() if k.startswith("model.")}),
                        "NaN or infinite"),
        "bad RNG state": (with_tensors(torch_rng=torch.zeros(3, dtype=torch.uint8)),
                          "unusable training state"),
    }


def test_a_corrupt_or_foreign_state_is_a_one_line_error(tiny_dataset, tmp_path):
    kwargs = dict(max_steps=1, batch_size=1, device="cpu", model_kwargs=TINY)
    train(tiny_dataset, tmp_path / "good", **kwargs)
    good = tmp_path / "good" / STATE_FILE
    variants = _state_variants(good, tmp_path / "good" / "last.safetensors")
    for name, (write, message) in variants.items():
        out = tmp_path / name
        out.mkdir()
        write(out / STATE_FILE)
        before = (out / STATE_FILE).read_bytes()
        with pytest.raises(CheckpointError) as info:
            train(tiny_dataset, out, **{**kwargs, "max_steps": 2}, resume=True)
        assert message in str(info.value) and len(str(info.value).splitlines()) == 1, name
        assert [p.name for p in out.iterdir()] == [STATE_FILE], name  # nothing written
        assert (out / STATE_FILE).read_bytes() == before, name


def test_resume_without_a_state_next_to_checkpoints_is_refused(tiny_dataset, tmp_path):
    """A run's checkpoints with no state to resume from are not overwritten by a new run."""
    train(tiny_dataset, tmp_path, max_steps=1, device="cpu", model_kwargs=TINY)
    (tmp_path / STATE_FILE).unlink()
    before = (tmp_path / "best.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="no train_state.safetensors to resume"):
        train(tiny_dataset, tmp_path, max_steps=2, device="cpu", model_kwargs=TINY, resume=True)
    assert (tmp_path / "best.safetensors").read_bytes() == before
    fresh = train(tiny_dataset, tmp_path / "new", max_steps=1, device="cpu", model_kwargs=TINY,
                  resume=True)  # nothing to resume in an empty folder: a new run
    assert fresh.steps == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"val_every": -1}, "val_every must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
    ],
)
def test_bad_training_arguments_are_named(tiny_dataset, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train(tiny_dataset, tmp_path, device="cpu", model_kwargs=TINY, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_within_a_step_and_writes_nothing(tiny_dataset, tmp_path):
    token = CancelToken()
    steps = []

    def progress(p):
        if p.stage == "train" and p.done:
            steps.append(p.done)
            if p.done == 2:
                token.cancel()

    with pytest.raises(Cancelled):
        train(
            tiny_dataset,
            tmp_path,
            max_steps=5,
            val_every=3,
            device="cpu",
            model_kwargs=TINY,
            progress=progress,
            cancel=token,
        )
    assert steps == [2 - 1, 2]  # no step after the one that saw the cancel
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary file


def test_labels_beyond_the_class_list_are_an_error(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="labels go up to 2"):
        train(
            tiny_dataset,
            tmp_path,
            class_names=["background", "disc"],
            max_steps=1,
            device="cpu",
            model_kwargs=TINY,
        )


def _write(path: Path, array: np.ndarray, spacing=None) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_nnunet_and_msd_layout(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for i in range(2):
        case = disc_case(i)
        vol = np.repeat(case.image[0][None], 8, 0) * 100
        _write(tmp_path / "imagesTr" / f"case{i}_0000.nii.gz", vol.astype(np.float32), (1, 1, 3))
        _write(tmp_path / "labelsTr" / f"case{i}.nii.gz", np.repeat(case.labels[None], 8, 0))
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "spleen": 2}}
        )
    )
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["background", "liver", "spleen"] and ds.modality == "CT"
    assert [c.image.shape for c in ds.cases] == [(1, 8, 32, 32)] * 2
    assert ds.cases[0].spacing == (3.0, 1.0, 1.0)
    (tmp_path / "labelsTr" / "case1.nii.gz").unlink()
    with pytest.raises(DatasetError, match="case1 has no label file"):
        load_dataset(tmp_path)


def test_png_folders_with_binary_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(2):
        case = disc_case(i)
        _write(
            tmp_path / "images" / f"x{i}.png",
            (case.image[0] * 100 + 50).clip(0, 255).astype(np.uint8),
        )
        _write(tmp_path / "labels" / f"x{i}.png", ((case.labels == 1) * 255).astype(np.uint8))
    ds = load_dataset(tmp_path)
    assert ds.class_names == ["background", "class 1"] and ds.modality == "XR"
    assert set(np.unique(ds.cases[0].labels)) == {0, 1}  # 255 is foreground here, not ignore
    with pytest.raises(DatasetError, match="neither imagesTr"):
        load_dataset(tmp_path / "images")


def test_foreground_oversampling_and_augmentation():
    cases = [disc_case(s, size=64) for s in range(2)]
    sampler = PatchSampler(cases, (16, 16), 2, np.random.default_rng(0), fg_fraction=1.0)
    x, y = sampler.batch(8)
    assert x.shape == (8, 1, 16, 16) and y.shape == (8, 16, 16)
    assert all(((yi > 0) & (yi != IGNORE)).any() for yi in y)
    aug = Augmentation(p_rotate=1.0, p_scale=1.0)
    g = torch.Generator().manual_seed(0)
    xa, ya = aug(torch.from_numpy(x), torch.from_numpy(y).long(), g)
    assert xa.shape == x.shape and ya.shape == y.shape
    assert set(torch.unique(ya).tolist()) <= {0, 1, 2, IGNORE}  # nearest: no new label values
    no_mirror = Augmentation(
        p_rotate=0, p_scale=0, mirror=False, p_brightness=0, p_contrast=0, p_gamma=0, p_noise=0
    )
    xb, yb = no_mirror(torch.from_numpy(x), torch.from_numpy(y).long(), g)
    assert torch.equal(xb, torch.from_numpy(x)) and torch.equal(yb, torch.from_numpy(y).long())


@pytest.mark.parametrize("centers", [False, True], ids=["foreground anchor", "fine-tuning"])
def test_patches_stay_inside_the_image_and_keep_their_anchor(centers):
    """Axis 0 (40 >= 32): the patch lies inside the image; axis 1 (24 < 32): it holds all 24
    columns. The voxel a patch is drawn around (a corner here: the only foreground voxel,
    or the fine-tuning centre) stays in the patch."""
    h, w = 40, 24
    image = np.arange(1, h * w + 1, dtype=np.float32).reshape(1, h, w)  # 0 = padding
    corners = np.ravel_multi_index(([0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]), (h, w))
    for pos in corners:
        labels = np.zeros(h * w, np.uint8)
        labels[pos] = 1
        sampler = PatchSampler(
            [Case("c", image, labels.reshape(h, w), (1.0, 1.0))], (32, 32), 2,
            np.random.default_rng(int(pos)), fg_fraction=0.0 if centers else 1.0,
            centers=[np.array([pos])] if centers else None,
        )
        x, y = sampler.batch(16)
        for xi, yi in zip(x[:, 0], y):
            assert (yi != IGNORE).sum() == 32 * w  # no padding rows, every column
            assert np.count_nonzero(xi) == 32 * w
            assert (xi == pos + 1).any(), "the anchor voxel left the patch"


@pytest.mark.slow
def test_torchrun_two_processes_on_the_cpu(tmp_path):
    """The distributed path (gloo, 2 processes) through the CLI, as torchrun runs it."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(3):
        case = disc_case(i)
        _write(
            data / "images" / f"x{i}.png", (case.image[0] * 100 + 50).clip(0, 255).astype(np.uint8)
        )
        _write(data / "labels" / f"x{i}.png", case.labels)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29731",
        "-m",
        "napari_lightm.cli",
        "train",
        str(data),
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--patch-size",
        "32,32",
        "--init-filters",
        "8",
        "--device",
        "cpu",
        "--quiet",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "trained 2 steps" in run.stdout and run.stdout.count("trained") == 1  # rank 0 only
    seg = Segmenter.load(out / "last.safetensors", device="cpu")
    assert seg.history[-1]["world_size"] == 2


def test_a_second_run_into_a_used_folder_is_refused_unless_asked(tiny_dataset, tmp_path):
    kwargs = dict(max_steps=1, batch_size=2, device="cpu", model_kwargs=TINY)
    train(tiny_dataset, tmp_path, **kwargs)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="already holds a training run .*overwrite=True"):
        train(tiny_dataset, tmp_path, **{**kwargs, "seed": 1})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    train(tiny_dataset, tmp_path, **{**kwargs, "seed": 1}, overwrite=True)
    assert (tmp_path / "last.safetensors").read_bytes() != before["last.safetensors"]
