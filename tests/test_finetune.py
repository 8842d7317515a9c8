"""Fine-tuning from reviewed voxels: new version, input untouched, cancel, budgets, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lightm.engine import (
    Cancelled,
    CancelToken,
    FinetuneSample,
    Segmenter,
    finetune,
    iter_finetune,
)
from napari_lightm.engine.metrics import segmentation_metrics
from napari_lightm.io.phantoms import ct_phantom, xray_phantom


@pytest.fixture(scope="module")
def ct_sample() -> FinetuneSample:
    image, labels, geometry = ct_phantom(seed=0, shape=(8, 32, 32), spacing=(2.5, 4.0, 4.0))
    reviewed = np.zeros(labels.shape, bool)
    reviewed[[2, 5]] = True  # two reviewed slices
    return FinetuneSample(image, labels, reviewed, geometry)


def new_seg(dims: int = 2, classes=("background", "liver", "spine"), **kw) -> Segmenter:
    torch.manual_seed(0)
    patch = (32, 32) if dims == 2 else (8, 32, 32)
    return Segmenter.new(
        dims, list(classes), "CT", init_filters=8, patch_size=patch, device="cpu", **kw
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_new_version_and_the_input_is_untouched(ct_sample, dims):
    seg = new_seg(dims)
    before = {k: v.clone() for k, v in seg.model.state_dict().items()}
    seen = []
    new = finetune(seg, [ct_sample], max_steps=2, progress=seen.append)
    assert new is not seg and (seg.version, new.version) == (0, 1)
    assert all(torch.equal(before[k], v) for k, v in seg.model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in new.model.state_dict().items())
    assert seg.history == [] and new.history[-1]["kind"] == "finetune"
    assert new.history[-1]["steps"] == 2 and new.history[-1]["reviewed_voxels"] == 2 * 32 * 32
    assert [(p.stage, p.done) for p in seen] == [("finetune", 0), ("finetune", 1), ("finetune", 2)]
    assert all(np.isfinite(p.loss) for p in seen[1:])
    assert new.preprocessing.stats_from == "data"  # a new CT model learns its statistics
    again = finetune(new, [ct_sample], max_steps=1)
    assert again.version == 2 and len(again.history) == 2
    assert again.preprocessing == new.preprocessing  # kept once the model has them


def test_cancel_gives_no_new_version(ct_sample):
    seg = new_seg()
    token = CancelToken()
    gen = iter_finetune(seg, [ct_sample], max_steps=50, cancel=token)
    assert next(gen).done == 0 and next(gen).done == 1
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)
    assert seg.version == 0 and seg.history == []


def test_time_budget_stops_the_run(ct_sample):
    seen = []
    new = finetune(new_seg(), [ct_sample], max_seconds=0.01, progress=seen.append)
    assert new.history[-1]["steps"] == 1 and seen[-1].total == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda s: FinetuneSample(s.image, s.labels, np.zeros_like(s.reviewed), s.geometry),
            "no reviewed voxels",
        ),
        (lambda s: FinetuneSample(s.image, s.labels + 3, s.reviewed, s.geometry), "label value"),
        (  # int8 -1 used to become the ignore label 255 silently
            lambda s: FinetuneSample(s.image, s.labels.astype(np.int8) - 1, s.reviewed,
                                     s.geometry),
            "negative label value -1",
        ),
        (  # int16 -2 used to end in an IndexError
            lambda s: FinetuneSample(s.image, s.labels.astype(np.int16) - 2, s.reviewed,
                                     s.geometry),
            "negative label value -2",
        ),
        (
            lambda s: FinetuneSample(s.image, s.labels.astype(np.float32), s.reviewed,
                                     s.geometry),
            "labels must be integers",
        ),
        (
            lambda s: FinetuneSample(s.image, s.labels[:4], s.reviewed[:4], s.geometry),
            "same spatial shape",
        ),
    ],
)
def test_unusable_samples_are_clear_errors(ct_sample, make, message):
    with pytest.raises(ValueError, match=message):
        finetune(new_seg(), [make(ct_sample)], max_steps=1)
    with pytest.raises(ValueError, match="no samples"):
        finetune(new_seg(), [], max_steps=1)


def test_predict_then_evaluate_on_the_xray_phantom():
    """Train briefly on the phantom itself (lungs as one class) at the recipe's LR for a
    new model: Dice must exceed 0.8 (an untrained model scores ~0)."""
    image, labels, geometry = xray_phantom(seed=0, size=48)
    lungs = np.isin(labels, (1, 2)).astype(np.uint8)
    torch.manual_seed(0)
    seg = Segmenter.new(
        2, ["background", "lungs"], "XR", init_filters=8, patch_size=(48, 48), device="cpu"
    )
    sample = FinetuneSample(image, lungs, np.ones(lungs.shape, bool), geometry)
    new = finetune(seg, [sample], max_steps=40, batch_size=1, augment=False)
    pred = new.predict(image, geometry)
    dice = segmentation_metrics(pred, lungs, new.class_names, geometry.scale)["lungs"]["dice"]
    assert dice > 0.8, dice
