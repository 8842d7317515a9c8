"""Fine-tuning from reviewed voxels: what the widget's "Fine-tune" button runs.

Recipe (defaults, chosen by ``benchmarks/finetune_recipe.py`` on the CT phantom, H200:
a 2D light model pretrained 300 steps on one phantom, then two review rounds of 60 steps
on 4 reviewed slices each; mean foreground Dice on unreviewed slices / an unseen phantom
after round 2: lr 1e-4 0.78 / 0.79, 3e-4 0.74 / 0.76, **1e-3 0.89 / 0.90**; replaying
all samples vs only the newest at 3e-4: 0.74-0.78 vs 0.79-0.83, i.e. no forgetting
visible on near-identical phantoms in one seed, so replay stays the default for the
reason cellpose gives, real images differ):

- replay of **all** reviewed samples given (every step draws its patches from all of
  them, not only the newest, so earlier corrections are not forgotten);
- patches centred (+- a quarter patch) on random reviewed voxels, 1/3 of them on a
  reviewed foreground voxel, then moved inside the image (or around the whole image where
  it is smaller than the patch): before that, patches hung over the border and a 64^2
  slice under a 64^2 patch was half padding (tiny 2D model, CT phantom, 60 steps on 3
  reviewed slices, 8 seeds: mean liver Dice of the unreviewed slices 0.18 -> 0.64);
  unreviewed voxels get the ignore label (no gradient);
- the training augmentation, Dice + CE, AdamW (weight decay 1e-5, eps 1e-5) at a
  constant LR (:data:`FINETUNE_LR`), gradient clipping 12, float32;
- a step budget (``max_steps``, default :data:`DEFAULT_STEPS`) and/or a time budget
  (``max_seconds``); whichever ends first;
- the patch is the model's, capped on the CPU at :data:`CPU_PATCH` so a step stays
  interactive.

The input Segmenter is never changed: the result is a copy with ``version + 1`` and a
history entry. A new model (no data statistics yet) takes its CT statistics from the
reviewed voxels of the samples.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_lightm.engine.callbacks import CancelToken, Progress, ProgressCallback, check
from napari_lightm.engine.data import (
    MAX_FG_INDICES,
    Augmentation,
    Case,
    PatchSampler,
    lateral_classes,
)
from napari_lightm.engine.losses import IGNORE
from napari_lightm.engine.preprocessing import as_channels
from napari_lightm.engine.segmenter import Segmenter, _drain, now
from napari_lightm.engine.training import make_optimizer, prepare_case, to_tensors, train_step

FINETUNE_LR = 1e-3  # best of 1e-4 / 3e-4 / 1e-3 in the experiment above
DEFAULT_STEPS = 100
BATCH_SIZE = 2
CPU_PATCH = {2: (128, 128), 3: (32, 64, 64)}


@dataclass
class FinetuneSample:
    """One image with its labels and the mask of voxels a person reviewed.

    Args:
        image: ``[*S]`` (or ``[C, *S]``) raw intensities.
        labels: ``[*S]`` integer labels (0 = background); only read where reviewed.
        reviewed: ``[*S]`` bool, True where the labels are right (these supervise).
        geometry: the image's :class:`~napari_lightm.io.Geometry` (spacing), optional.
    """

    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray
    geometry: Any = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        self.reviewed = np.asarray(self.reviewed, dtype=bool)
        spatial = self.image.shape[-self.labels.ndim :] if self.labels.ndim else ()
        if self.labels.shape != self.reviewed.shape or tuple(spatial) != self.labels.shape:
            raise ValueError(
                f"fine-tuning sample: image {self.image.shape}, labels {self.labels.shape} and "
                f"reviewed mask {self.reviewed.shape} must have the same spatial shape"
            )


def _sample_case(seg: Segmenter, s: FinetuneSample, i: int) -> Case:
    seg.check_compatible(s.image, s.geometry)
    if s.labels.dtype.kind not in "biu":
        raise ValueError(f"sample {i}: labels must be integers, got {s.labels.dtype}")
    if seg.n_classes > IGNORE:
        raise ValueError(
            f"fine-tuning takes models of at most {IGNORE} classes ({IGNORE} marks ignored "
            f"voxels); this one has {seg.n_classes}"
        )
    reviewed = s.labels[s.reviewed]
    low, top = int(reviewed.min(initial=0)), int(reviewed.max(initial=0))
    if low < 0:
        raise ValueError(f"sample {i}: negative label value {low} (labels are class indices)")
    if top >= seg.n_classes:
        raise ValueError(
            f"sample {i}: label value {top} but the model has classes {seg.class_names}"
        )
    labels = np.where(s.reviewed, s.labels, IGNORE)
    image = as_channels(s.image, seg.in_channels).astype(np.float32)
    spacing, _ = seg.input_spacing(labels.shape, s.geometry)
    return Case(f"sample {i}", image, labels.astype(np.uint8), spacing)


def finetune_patch(seg: Segmenter, cases: Sequence[Case], device: torch.device) -> tuple[int, ...]:
    """Model patch, capped on the CPU and at the (rounded-up) largest sample size."""
    patch = list(seg.patch_size)
    if device.type == "cpu":
        patch = [min(p, c) for p, c in zip(patch, CPU_PATCH[seg.spatial_dims])]
    biggest = np.max([c.labels.shape[-seg.spatial_dims :] for c in cases], axis=0)
    return tuple(int(min(p, int(np.ceil(b / 8)) * 8)) for p, b in zip(patch, biggest))


def iter_finetune(
    segmenter: Segmenter,
    samples: Sequence[FinetuneSample],
    *,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    lr: float | None = None,
    batch_size: int = BATCH_SIZE,
    patch_size: Sequence[int] | None = None,
    augment: bool = True,
    seed: int = 0,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Segmenter]:
    """Fine-tune a copy of ``segmenter`` on the reviewed voxels of ``samples``.

    Yields ``Progress(step, max_steps, stage="finetune", loss=...)`` after each step
    (``total`` is 0 when only a time budget is given; ``message`` shows the seconds).
    Returns the new :class:`Segmenter` (``version + 1``). Raises :class:`Cancelled`
    when ``cancel`` is set (no new version), ValueError for unusable samples.
    """
    if not samples:
        raise ValueError("no samples to fine-tune on")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if max_steps is None and max_seconds is None:
        max_steps = DEFAULT_STEPS
    raw = [_sample_case(segmenter, s, i) for i, s in enumerate(samples)]
    n_reviewed = int(sum(np.count_nonzero(c.labels != IGNORE) for c in raw))
    if n_reviewed == 0:
        raise ValueError("no reviewed voxels: mark slices as reviewed (or edit them) first")

    new = segmenter.copy()
    if new.preprocessing.stats_from == "default" and new.version == 0:
        new.preprocessing = new.preprocessing.fit(
            [c.image for c in raw], [c.labels for c in raw], seed
        )
    cases = [prepare_case(c, new.preprocessing, new.spatial_dims) for c in raw]
    rng = np.random.default_rng(seed)
    centers = []
    for c in cases:
        pos = np.flatnonzero(c.labels != IGNORE)
        if pos.size > MAX_FG_INDICES:
            pos = np.sort(rng.choice(pos, MAX_FG_INDICES, replace=False))
        centers.append(pos)
    keep = [i for i, p in enumerate(centers) if p.size]  # samples with reviewed voxels
    cases, centers = [cases[i] for i in keep], [centers[i] for i in keep]
    device = new.device
    patch = tuple(patch_size) if patch_size else finetune_patch(new, cases, device)
    sampler = PatchSampler(cases, patch, new.spatial_dims, rng, centers=centers)
    gen = torch.Generator().manual_seed(seed)
    aug = Augmentation(mirror=not lateral_classes(new.class_names)) if augment else None
    lr = FINETUNE_LR if lr is None else lr
    opt = make_optimizer(new.model, lr, name="adamw")

    t0 = time.monotonic()
    losses: list[float] = []
    total = max_steps or 0
    step = 0
    yield Progress(0, total, "finetune", message=f"{n_reviewed} reviewed voxels")
    while True:
        check(cancel)
        x, y = to_tensors(*sampler.batch(batch_size), device)
        losses.append(train_step(new.model, opt, x, y, augment=aug, generator=gen))
        step += 1
        elapsed = time.monotonic() - t0
        yield Progress(step, total, "finetune", loss=losses[-1], message=f"{elapsed:.1f} s")
        if (max_steps is not None and step >= max_steps) or (
            max_seconds is not None and elapsed >= max_seconds
        ):
            break
    check(cancel)
    new.model.eval()
    new.version = segmenter.version + 1
    new.history.append(
        {
            "kind": "finetune",
            "time": now(),
            "steps": step,
            "seconds": round(elapsed, 1),
            "lr": lr,
            "batch_size": batch_size,
            "patch_size": list(patch),
            "samples": len(samples),
            "reviewed_voxels": n_reviewed,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "from_version": segmenter.version,
        }
    )
    return new


def finetune(
    segmenter: Segmenter,
    samples: Sequence[FinetuneSample],
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> Segmenter:
    """Plain form of :func:`iter_finetune` (same arguments); returns the new Segmenter."""
    return _drain(iter_finetune(segmenter, samples, **kwargs), progress)


__all__ = ["FINETUNE_LR", "FinetuneSample", "finetune", "iter_finetune"]
