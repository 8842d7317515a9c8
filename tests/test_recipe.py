"""The few-slice recipe: one named object that finetune(), the CLI and the widget use;
its budgets; Segment unreviewed with the interpolated shape and the 3D clean-up."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from napari_lightm.engine import FinetuneSample, Segmenter, finetune, iter_finetune
from napari_lightm.engine.losses import IGNORE
from napari_lightm.engine.recipe import (
    DEFAULT_RECIPE,
    FinetuneRecipe,
    interpolated_targets,
    new_segmenter,
)
from napari_lightm.engine.unreviewed import labels_from_logits, predict_unreviewed
from napari_lightm.io.phantoms import ct_phantom

TINY = DEFAULT_RECIPE.replace(patch=32, batch_size=1)


@pytest.fixture(scope="module")
def volume():
    image, labels, geometry = ct_phantom(seed=0, shape=(9, 32, 32), spacing=(2.5, 4.0, 4.0))
    liver = (labels == 1).astype(np.uint8)
    truth = np.zeros(liver.shape, bool)
    truth[[2, 6]] = True
    return image, liver, truth, geometry


def tiny_seg(**kw) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter.new(2, ["background", "liver"], "CT", init_filters=8, patch_size=(32, 32),
                         device="cpu", **kw)


def test_the_recipe_is_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_RECIPE.lr = 1.0
    with pytest.raises(ValueError, match="schedule"):
        FinetuneRecipe(schedule="step")
    with pytest.raises(ValueError, match="patch"):
        DEFAULT_RECIPE.replace(patch=30)


def test_finetune_uses_the_default_recipe_unless_given_one(volume):
    for fn in (finetune, iter_finetune):
        assert inspect.signature(fn).parameters.get("recipe") is not None or fn is finetune
    assert inspect.signature(iter_finetune).parameters["recipe"].default is None
    image, liver, truth, geometry = volume
    sample = FinetuneSample(image, liver, truth, geometry)
    new = finetune(tiny_seg(), [sample], max_steps=1, patch_size=(32, 32), batch_size=1)
    h = new.history[-1]
    assert h["recipe"] == DEFAULT_RECIPE.name and h["lr"] == DEFAULT_RECIPE.lr
    assert h["schedule"] == DEFAULT_RECIPE.schedule
    other = TINY.replace(name="other", lr=5e-4, lr_trained=2e-4)
    again = finetune(new, [sample], max_steps=1, recipe=other)
    assert again.history[-1]["recipe"] == "other" and again.history[-1]["lr"] == 2e-4


def test_the_cli_fine_tunes_with_the_default_recipe(tmp_path):
    import SimpleITK as sitk

    from napari_lightm.cli import main
    from napari_lightm.io import write_labels

    image, labels, geometry = ct_phantom(seed=0, shape=(8, 32, 32), spacing=(2.5, 4.0, 4.0))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sitk.WriteImage(geometry.apply_to_sitk(sitk.GetImageFromArray(image)),
                    str(tmp_path / "images" / "ct.mha"))
    write_labels(tmp_path / "labels" / "ct.nrrd", (labels == 1).astype(np.uint8), geometry)
    model = tiny_seg().save(tmp_path / "m.safetensors")
    argv = ["finetune", str(model), str(tmp_path / "images"), str(tmp_path / "labels"),
            str(tmp_path / "v1.safetensors"), "--steps", "1", "-q", "--device", "cpu"]
    assert main(argv) == 0
    loaded = Segmenter.load(tmp_path / "v1.safetensors", device="cpu")
    assert loaded.history[-1]["recipe"] == DEFAULT_RECIPE.name


def test_a_new_volume_model_takes_the_recipe_spacing(volume):
    image, liver, truth, geometry = volume
    seg = new_segmenter(["background", "liver"], (2.5, 0.7, 0.7), device="cpu")
    assert seg.spatial_dims == DEFAULT_RECIPE.spatial_dims
    assert seg.model.init_filters == DEFAULT_RECIPE.init_filters
    p = DEFAULT_RECIPE.plane_spacing_mm
    assert seg.spacing == (p, p)
    # fine-tuning an untrained model without a spacing of its own gives it the recipe's
    fine = TINY.replace(plane_spacing_mm=8.0)
    new = finetune(tiny_seg(), [FinetuneSample(image, liver, truth, geometry)], max_steps=1,
                   recipe=fine)
    assert new.spacing == (8.0, 8.0)


def test_interpolated_targets_are_sure_inside_and_outside_and_ignored_between(volume):
    _, liver, truth, geometry = volume
    targets = interpolated_targets(liver, truth, geometry.scale, DEFAULT_RECIPE)
    assert (targets[[0, 1, 2, 6, 7, 8]] == IGNORE).all()  # reviewed or outside the range
    between = targets[3:6]
    assert {0, 1, IGNORE} == set(np.unique(between))
    sure = between != IGNORE
    assert np.mean(between[sure] == liver[3:6][sure]) > 0.97
    one = np.zeros_like(truth)
    one[4] = True
    assert interpolated_targets(liver, one, geometry.scale) is None


def test_the_lr_schedule_decays_over_the_budget():
    poly = DEFAULT_RECIPE.replace(schedule="poly")
    assert poly.lr_factor(0.0, 0) == 1.0
    assert poly.lr_factor(0.5, 10) < poly.lr_factor(0.1, 2) < 1.0
    assert DEFAULT_RECIPE.replace(schedule="constant").lr_factor(0.9, 50) == 1.0
    assert DEFAULT_RECIPE.replace(warmup=4).lr_factor(0.0, 0) < 1.0


def test_max_seconds_is_overrun_by_at_most_one_step(volume, monkeypatch):
    """A clock that moves 0.3 s per step and 5 s in the warm-up: a 1 s budget runs 4
    steps (1.2 s), the warm-up (compilation) is not counted."""
    from napari_lightm.engine import finetuning

    now = [100.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return now[0]

    def advance(seconds, fn):
        def wrapped(*args, **kwargs):
            now[0] += seconds
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(finetuning, "time", Clock)
    monkeypatch.setattr(finetuning, "train_step", advance(0.3, finetuning.train_step))
    monkeypatch.setattr(finetuning, "_warm_up", advance(5.0, finetuning._warm_up))
    image, liver, truth, geometry = volume
    sample = FinetuneSample(image, liver, truth, geometry)
    new = finetune(tiny_seg(), [sample], max_seconds=1.0, recipe=TINY)
    h = new.history[-1]
    assert h["steps"] == 4 and h["seconds"] == 1.2 and h["warmup_seconds"] == 5.0
    both = finetune(tiny_seg(), [sample], max_seconds=1.0, max_steps=2, recipe=TINY)
    assert both.history[-1]["steps"] == 2  # whichever budget ends first


def test_segment_unreviewed_keeps_truth_and_follows_the_reviewed_shape(volume):
    image, liver, truth, geometry = volume
    labels = np.where(truth, liver, 0).astype(np.uint8)
    seg = tiny_seg()
    strong = TINY.replace(prior_weight=1e3)  # the shape outweighs an untrained model
    out = predict_unreviewed(seg, image, geometry, labels, truth, recipe=strong)
    assert out.dtype == np.uint8 and out.shape == liver.shape
    np.testing.assert_array_equal(out[truth], labels[truth])
    from napari_lightm.engine.interpolation import interpolate_labels

    interp = interpolate_labels(labels, [2, 6], geometry.scale)
    np.testing.assert_array_equal(out[3:6], interp[3:6])
    with pytest.raises(ValueError, match="same spatial shape"):
        predict_unreviewed(seg, image, geometry, labels[:4], truth[:4])


def test_segment_unreviewed_drops_blobs_that_do_not_touch_the_reviewed_organ():
    logits = np.zeros((2, 6, 16, 16), np.float32)
    logits[1] = -5
    logits[1, 1:5, 2:8, 2:8] = 5  # the organ, through the reviewed slices 1 and 4
    logits[1, 2, 12:15, 12:15] = 5  # a blob elsewhere
    logits[1, 2, 4, 4] = -5  # a hole in the organ
    truth = np.zeros((6, 16, 16), bool)
    truth[[1, 4]] = True
    labels = np.zeros((6, 16, 16), np.uint8)
    labels[[1, 4], 2:8, 2:8] = 1
    out = labels_from_logits(logits.copy(), labels, truth, (2.0, 1.0, 1.0))
    assert out[2, 13, 13] == 0 and out[2, 4, 4] == 1 and out[2:4, 2:8, 2:8].all()
    bare = DEFAULT_RECIPE.replace(keep_connected=False, fill_holes=False, prior_weight=0.0)
    raw = labels_from_logits(logits.copy(), labels, truth, (2.0, 1.0, 1.0), bare)
    assert raw[2, 13, 13] == 1 and raw[2, 4, 4] == 0
