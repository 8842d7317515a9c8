"""Fine-tuning from reviewed voxels: what the widget's "Fine-tune" button runs.

What the run does is the named recipe :data:`~napari_lightm.engine.recipe.DEFAULT_RECIPE`
(:class:`~napari_lightm.engine.recipe.FinetuneRecipe`; its docstring lists the choices,
``benchmarks/hitl.py`` measures them); the widget, :func:`finetune` and ``lightm
finetune`` all use it unless given another one. In short:

- replay of **all** reviewed samples given (every step draws its patches from all of
  them, not only the newest, so earlier corrections are not forgotten);
- patches centred (+- a quarter patch) on random reviewed voxels, 1/3 of them on a
  reviewed foreground voxel, kept inside the image; unreviewed voxels get the ignore
  label (no gradient);
- between reviewed slices of a volume, a share of the patches comes from the unreviewed
  slices, labelled by shape interpolation where it is sure (a band around the
  interpolated boundary is ignored);
- Dice + CE, AdamW (weight decay 1e-5, eps 1e-5) with the recipe's LR schedule over the
  budget, gradient clipping 12, float32;
- a step budget (``max_steps``) and/or a time budget (``max_seconds``); whichever ends
  first.

The input Segmenter is never changed: the result is a copy with ``version + 1`` and a
history entry. A new model (no data statistics yet) takes its CT statistics from the
reviewed voxels of the samples; one that never trained and has no spacing of its own
takes the recipe's model spacing for volumes.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_lightm.engine.callbacks import CancelToken, Progress, ProgressCallback, check, drain
from napari_lightm.engine.data import (
    MAX_FG_INDICES,
    Augmentation,
    Case,
    PatchSampler,
    lateral_classes,
)
from napari_lightm.engine.losses import IGNORE, dice_ce_loss
from napari_lightm.engine.metadata import now
from napari_lightm.engine.preprocessing import as_channels, resample_to
from napari_lightm.engine.recipe import (
    DEFAULT_RECIPE,
    FinetuneRecipe,
    interpolated_targets,
    untrained,
)
from napari_lightm.engine.segmenter import Segmenter
from napari_lightm.engine.training import make_optimizer, prepare_case, to_tensors, train_step

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


def finetune_patch(
    seg: Segmenter, cases: Sequence[Case], device: torch.device, recipe: FinetuneRecipe
) -> tuple[int, ...]:
    """Training patch: the recipe's square patch for a 2D model, the model's (capped on the
    CPU) for a 3D one; never larger than the (rounded-up) largest sample."""
    if seg.spatial_dims == 2:
        patch = [recipe.patch, recipe.patch]
    else:
        patch = list(seg.patch_size)
        if device.type == "cpu":
            patch = [min(p, c) for p, c in zip(patch, CPU_PATCH[3])]
    biggest = np.max([c.labels.shape[-seg.spatial_dims :] for c in cases], axis=0)
    return tuple(int(min(p, int(np.ceil(b / 8)) * 8)) for p, b in zip(patch, biggest))


def _centers(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat positions of the supervised (not ignored) voxels, at most MAX_FG_INDICES."""
    pos = np.flatnonzero(labels != IGNORE)
    if pos.size > MAX_FG_INDICES:
        pos = np.sort(rng.choice(pos, MAX_FG_INDICES, replace=False))
    return pos


def _shape_case(
    s: FinetuneSample, raw: Case, prepared: Case, new: Segmenter, recipe: FinetuneRecipe
) -> Case | None:
    """The sample's interpolated targets (recipe) as a case sharing the prepared image."""
    if s.labels.ndim != 3:
        return None
    targets = interpolated_targets(s.labels, s.reviewed, raw.spacing, recipe)
    if targets is None or not np.any(targets != IGNORE):
        return None
    if new.spatial_dims == 2:
        targets = resample_to(targets, raw.spacing[1:], new.preprocessing.spacing, order=0)
    else:
        targets = resample_to(targets, raw.spacing, new.preprocessing.spacing, order=0)
    return Case(f"{raw.name} (shape)", prepared.image, np.ascontiguousarray(targets),
                raw.spacing)


def iter_finetune(
    segmenter: Segmenter,
    samples: Sequence[FinetuneSample],
    *,
    recipe: FinetuneRecipe | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    patch_size: Sequence[int] | None = None,
    augment: bool | None = None,
    seed: int = 0,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, Segmenter]:
    """Fine-tune a copy of ``segmenter`` on the reviewed voxels of ``samples``.

    ``recipe`` (default :data:`~napari_lightm.engine.recipe.DEFAULT_RECIPE`) chooses
    everything the other arguments leave at None: LR (and its schedule), batch size, patch,
    augmentation, the interpolated targets between reviewed slices, and, for a model that
    never trained and has no spacing of its own, the model spacing.

    The time budget ``max_seconds`` counts from the first step: the set-up (resampling,
    interpolation) and one warm-up forward/backward pass (kernel compilation) come before
    it and are reported in the history (``setup_seconds``, ``warmup_seconds``). The run
    stops after the step that reaches the budget, so it ends less than one step late.

    Yields ``Progress(step, max_steps, stage="finetune", loss=...)`` after each step
    (``total`` is 0 when only a time budget is given; ``message`` shows the seconds).
    Returns the new :class:`Segmenter` (``version + 1``). Raises :class:`Cancelled`
    when ``cancel`` is set (no new version), ValueError for unusable samples.
    """
    recipe = DEFAULT_RECIPE if recipe is None else recipe
    if not samples:
        raise ValueError("no samples to fine-tune on")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if max_steps is None and max_seconds is None:
        max_steps = recipe.default_steps
    t_setup = time.monotonic()
    raw = [_sample_case(segmenter, s, i) for i, s in enumerate(samples)]
    n_reviewed = int(sum(np.count_nonzero(c.labels != IGNORE) for c in raw))
    if n_reviewed == 0:
        raise ValueError("no reviewed voxels: mark slices as reviewed (or edit them) first")

    new = segmenter.copy()
    fresh = untrained(segmenter)
    volumes = [c for c in raw if c.labels.ndim == 3]
    if fresh and new.preprocessing.spacing is None and volumes:
        new.preprocessing.spacing = recipe.model_spacing(volumes[0].spacing, new.spatial_dims)
    if new.preprocessing.stats_from == "default" and new.version == 0:
        new.preprocessing = new.preprocessing.fit(
            [c.image for c in raw], [c.labels for c in raw], seed
        )
    cases = [prepare_case(c, new.preprocessing, new.spatial_dims) for c in raw]
    shape_cases = [
        _shape_case(s, r, c, new, recipe) for s, r, c in zip(samples, raw, cases)
    ] if recipe.pseudo_fraction > 0 else []
    shape_cases = [c for c in shape_cases if c is not None]
    rng = np.random.default_rng(seed)
    centers = [_centers(c.labels, rng) for c in cases]
    keep = [i for i, p in enumerate(centers) if p.size]  # samples with reviewed voxels
    cases, centers = [cases[i] for i in keep], [centers[i] for i in keep]
    device = new.device
    patch = (
        tuple(patch_size) if patch_size else finetune_patch(new, cases, device, recipe)
    )
    sampler = PatchSampler(cases, patch, new.spatial_dims, rng, centers=centers)
    shape_sampler = None
    if shape_cases:
        shape_sampler = PatchSampler(
            shape_cases, patch, new.spatial_dims, rng,
            centers=[_centers(c.labels, rng) for c in shape_cases],
        )
    gen = torch.Generator().manual_seed(seed)
    augment = recipe.augment if augment is None else augment
    mirror = recipe.mirror and not lateral_classes(new.class_names)
    aug = Augmentation(mirror=mirror) if augment else None
    lr = recipe.learning_rate(fresh) if lr is None else lr
    batch_size = recipe.batch_size if batch_size is None else batch_size
    opt = make_optimizer(new.model, lr, name="adamw")

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        picks = [
            shape_sampler is not None and rng.random() < recipe.pseudo_fraction
            for _ in range(batch_size)
        ]
        xs, ys = zip(*((shape_sampler if p else sampler).one() for p in picks))
        return to_tensors(np.stack(xs), np.stack(ys), device)

    check(cancel)
    setup = time.monotonic() - t_setup
    t_warm = time.monotonic()
    _warm_up(new.model, *batch())
    warmup = time.monotonic() - t_warm

    t0 = time.monotonic()
    losses: list[float] = []
    total = max_steps or 0
    step = 0
    elapsed = 0.0
    yield Progress(0, total, "finetune", message=f"{n_reviewed} reviewed voxels")
    while True:
        check(cancel)
        progress = max(
            step / max_steps if max_steps else 0.0,
            elapsed / max_seconds if max_seconds else 0.0,
        )
        for group in opt.param_groups:
            group["lr"] = lr * recipe.lr_factor(progress, step)
        x, y = batch()
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
            "recipe": recipe.name,
            "steps": step,
            "seconds": round(elapsed, 1),
            "setup_seconds": round(setup, 1),
            "warmup_seconds": round(warmup, 1),
            "lr": lr,
            "schedule": recipe.schedule,
            "batch_size": batch_size,
            "patch_size": list(patch),
            "samples": len(samples),
            "reviewed_voxels": n_reviewed,
            "shape_targets": len(shape_cases),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "from_version": segmenter.version,
        }
    )
    return new


def _warm_up(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """A forward/backward pass and a step of a throw-away optimizer with LR 0 (weights
    unchanged): kernels compile and the optimizer's lazy imports load before the clock."""
    model.train()
    loss = dice_ce_loss(model(x), y)
    loss.backward()
    make_optimizer(model, 0.0, name="adamw").step()
    model.zero_grad(set_to_none=True)


def finetune(
    segmenter: Segmenter,
    samples: Sequence[FinetuneSample],
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> Segmenter:
    """Plain form of :func:`iter_finetune` (same arguments); returns the new Segmenter."""
    return drain(iter_finetune(segmenter, samples, **kwargs), progress)


__all__ = ["DEFAULT_RECIPE", "FinetuneRecipe", "FinetuneSample", "finetune", "iter_finetune"]
