"""Training on a dataset folder (or in-memory cases), single process or DDP via ``torchrun``.

Recipe (the authors' nnU-Net trainer, adapted to short runs):

- patches of the model's patch size, 1/3 centred on foreground (nnU-Net), augmentation
  (:class:`~napari_lightm.engine.data.Augmentation`; no mirroring when class names say
  left/right);
- loss Dice (no background) + CE 1:1 with the ignore label 255
  (:func:`~napari_lightm.engine.losses.dice_ce_loss`);
- Adam(W), weight decay 1e-5 (not on ``A_log``/``D``), eps 1e-5, poly LR (exponent 0.9),
  gradient clipping at 12, float32 (TF32 matmuls on CUDA; AMP off: Mamba NaNs under fp16);
- default LR :data:`DEFAULT_LR` (see its comment for the experiment that chose it);
- validation Dice (mean over foreground classes, sliding window) every ``val_every``
  steps on a held-out share of the cases; ``best.safetensors`` (best validation Dice)
  and ``last.safetensors`` + ``train_state.safetensors`` (weights, optimizer, step, RNG
  states, losses: ``resume=True`` continues the run exactly; no pickle, see
  :func:`~napari_lightm.engine.checkpoint.save_train_state`) in ``out_dir``, all written
  atomically. Cancel raises :class:`Cancelled` between steps and writes nothing more.

Distributed: when ``WORLD_SIZE`` > 1 (``torchrun``), the process group is initialised
from the environment (NCCL on CUDA, gloo on CPU), the model is wrapped in
DistributedDataParallel, each rank samples its own patches (seed + rank) and only rank 0
validates and writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_lightm._triton_guard import keep_triton_out
from napari_lightm.engine.callbacks import CancelToken, Progress, ProgressCallback, check, drain
from napari_lightm.engine.checkpoint import (
    save_train_state,
)
from napari_lightm.engine.data import (
    Augmentation,
    Case,
    Dataset,
    PatchSampler,
    lateral_classes,
    load_dataset,
)
from napari_lightm.engine.inference import iter_sliding_window
from napari_lightm.engine.losses import IGNORE, dice_ce_loss
from napari_lightm.engine.metadata import now
from napari_lightm.engine.metrics import mean_dice
from napari_lightm.engine.preprocessing import Preprocessing, resample_to
from napari_lightm.engine.segmenter import DEFAULT_PATCH, Segmenter
from napari_lightm.engine.train_state import (
    STATE_FILE,
    TrainResult,
    restore_train_state,
    resume_state,
    run_files,
    train_state,
)

# Adam 1e-4 is the authors' LR for 25,000 steps. For short runs 1e-3 learns much faster:
# 150 steps x batch 16 on 256^2 X-ray phantoms (H200, triton scan), loss 1.72 -> 0.88 and
# test Dice 0.377 with 1e-3 against 1.88 -> 1.52 and 0.338 with 1e-4.
DEFAULT_LR = 1e-3
WEIGHT_DECAY = 1e-5
ADAM_EPS = 1e-5
GRAD_CLIP = 12.0
POLY_EXPONENT = 0.9


# --- pieces shared with fine-tuning ---------------------------------------------------------


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float = WEIGHT_DECAY, name: str = "adamw"
) -> torch.optim.Optimizer:
    """Adam / AdamW (eps 1e-5); parameters marked ``_no_weight_decay`` get none."""
    keep_triton_out()  # the first optimizer imports torch._dynamo
    decay = [p for p in model.parameters() if not getattr(p, "_no_weight_decay", False)]
    no_decay = [p for p in model.parameters() if getattr(p, "_no_weight_decay", False)]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if name.lower() == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=ADAM_EPS)
    if name.lower() == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=ADAM_EPS)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'adamw'")


def poly_lr(base_lr: float, step: int, total: int, exponent: float = POLY_EXPONENT) -> float:
    """``base_lr * (1 - step / total) ** exponent`` (nnU-Net's poly schedule)."""
    return base_lr * max(0.0, 1.0 - step / max(1, total)) ** exponent


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    grad_clip: float = GRAD_CLIP,
    augment: Augmentation | None = None,
    generator: Any = None,
) -> float:
    """One optimisation step on ``x [B, C, *P]``, ``y [B, *P]``; returns the loss.

    A non-finite loss skips the update (and returns nan).
    """
    if augment is not None:
        x, y = augment(x, y, generator)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = dice_ce_loss(model(x), y)
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return float("nan")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def to_tensors(
    x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(x).to(device, torch.float32),
        torch.from_numpy(y.astype(np.int64)).to(device),
    )


def prepare_case(case: Case, pre: Preprocessing, spatial_dims: int) -> Case:
    """Resample a raw case to the model spacing (image linear, labels nearest) and normalise."""
    spacing = case.spacing
    if case.labels.ndim == 3 and spatial_dims == 2:
        image = resample_to(case.image, spacing[1:], pre.spacing, order=1)
        labels = resample_to(case.labels, spacing[1:], pre.spacing, order=0)
    else:
        image = resample_to(case.image, spacing, pre.spacing, order=1)
        labels = resample_to(case.labels, spacing, pre.spacing, order=0)
    return Case(case.name, pre.normalize(image), np.ascontiguousarray(labels), spacing)


def model_spacing(cases: Sequence[Case], spatial_dims: int) -> tuple[float, ...] | None:
    """Median voxel spacing of the cases on the model's axes (nnU-Net's target spacing)."""
    sp = np.array([c.spacing[-spatial_dims:] for c in cases], dtype=float)
    med = np.median(sp, axis=0)
    return tuple(float(s) for s in med)


def field_of_view(
    cases: Sequence[Case], spatial_dims: int, spacing: Sequence[float] | None
) -> tuple[float, ...] | None:
    """Median physical extent (mm, array order) of the cases on the model's axes.

    Stored with the model: an X-ray without a pixel spacing is scaled so that it spans
    this field of view (:func:`napari_lightm.engine.preprocessing.estimate_spacing`).
    """
    if spacing is None:
        return None
    extent = np.array([np.multiply(c.labels.shape[-spatial_dims:], c.spacing[-spatial_dims:])
                       for c in cases], dtype=float)
    return tuple(float(v) for v in np.median(extent, axis=0))


def default_patch(cases: Sequence[Case], spatial_dims: int) -> tuple[int, ...]:
    """The default patch, shrunk to the median image size (rounded up to 8) where smaller."""
    shapes = np.array([c.labels.shape[-spatial_dims:] for c in cases])
    med = np.median(shapes, axis=0)
    return tuple(
        int(min(p, int(np.ceil(m / 8)) * 8)) for p, m in zip(DEFAULT_PATCH[spatial_dims], med)
    )


def validate(
    model: torch.nn.Module,
    cases: Sequence[Case],
    patch: Sequence[int],
    n_classes: int,
    spatial_dims: int,
    cancel: CancelToken | None = None,
) -> float:
    """Mean foreground Dice over ``cases`` (prepared), sliding window without overlap."""
    scores = []
    for case in cases:
        check(cancel)
        vol = torch.from_numpy(case.image)
        if case.labels.ndim > spatial_dims:
            vol = vol.transpose(0, 1)  # [Z, C, Y, X]: slices are planes
        else:
            vol = vol[None]
        gen = iter_sliding_window(
            model, vol, patch, n_classes, overlap=0.25, cancel=cancel, stage="validate"
        )
        logits = drain(gen, None)
        pred = logits.argmax(1).numpy()
        pred = pred if case.labels.ndim > spatial_dims else pred[0]
        scores.append(mean_dice(pred, case.labels, n_classes))
    return float(np.mean(scores)) if scores else float("nan")


# --- distributed --------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (env:// init)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return Dist(
        dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), started
    )


# --- the training loop ----------------------------------------------------------------------


def iter_train(
    data: str | Path | Dataset,
    out_dir: str | Path,
    *,
    spatial_dims: int | None = None,
    config: str = "light",
    class_names: Sequence[str] | None = None,
    modality: str | None = None,
    max_steps: int | None = None,
    epochs: int | None = None,
    steps_per_epoch: int = 250,
    patch_size: Sequence[int] | None = None,
    batch_size: int = 2,
    lr: float = DEFAULT_LR,
    weight_decay: float = WEIGHT_DECAY,
    optimizer: str = "adamw",
    grad_clip: float = GRAD_CLIP,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    val_fraction: float = 0.1,
    val_every: int | None = None,
    max_val_cases: int = 16,
    device: Any = "auto",
    spacing: str | Sequence[float] | None = "median",
    augment: bool | Any = True,
    init: Segmenter | None = None,
    model_kwargs: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[Progress, None, TrainResult]:
    """Train a LightM-UNet; yields ``Progress(stage="train", loss=...)`` per step.

    Args:
        data: dataset folder (see :mod:`napari_lightm.engine.data`) or a :class:`Dataset`.
        out_dir: checkpoints go here (``best``/``last.safetensors``,
            ``train_state.safetensors``).
        spatial_dims: 2 or 3; default 2 for 2D images, else 3.
        config: ``"light"`` or ``"repo"``.
        class_names: override the names from ``dataset.json``.
        modality: override the dataset's modality.
        max_steps / epochs x steps_per_epoch: length (default 1000 steps).
        patch_size: default 256² / 64x128x128, capped at the median image size.
        batch_size: per process.
        lr, weight_decay, optimizer, grad_clip: optimisation (see module docstring).
        seed: seeds weights, patch sampling and augmentation.
        resume: continue from ``out_dir/train_state.safetensors`` (same step count, RNG
            states and losses). Without a state there, a folder holding no checkpoints
            starts a new run; one with checkpoints, or with only an old-format
            ``train_state.pt`` (pickle, never loaded), raises :class:`CheckpointError`.
        overwrite: replace the checkpoints of an earlier run in ``out_dir``; without it
            (and without ``resume``) a folder holding one is refused with ValueError, so
            a second run never silently replaces the first one's models.
        val_fraction, val_every, max_val_cases: validation split and schedule
            (default every ``max_steps // 10`` steps, at least 1).
        device: see :func:`~napari_lightm.engine.pick_device` (``cuda:LOCAL_RANK`` under
            torchrun).
        spacing: ``"median"`` (of the data), None (as the images are) or a spacing.
        augment: True for :class:`Augmentation`, False for none, or an augmentation
            object (``aug(x, y, generator) -> (x, y)``, e.g. ``XRayAugmentation``).
        init: start from this Segmenter's weights (fine-tuning a trained model on a dataset).
        model_kwargs: override LightMUNet arguments (e.g. ``{"init_filters": 8}``).
        cancel: checked every step; raises :class:`Cancelled` (nothing half-written).

    Returns (generator return value): :class:`TrainResult`.
    """
    from napari_lightm.engine.device import pick_device

    dev = pick_device(device)
    dist_info = init_distributed(dev)
    if dist_info.world > 1 and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(out_dir)
    total = max_steps if max_steps is not None else (epochs * steps_per_epoch if epochs else 1000)
    if total < 1:
        raise ValueError(f"max_steps must be >= 1, got {total}")
    for name, value in (("batch_size", batch_size), ("val_every", val_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file")
    earlier = run_files(out_dir)
    if earlier and not (resume or overwrite):
        raise ValueError(
            f"{out_dir} already holds a training run ({', '.join(earlier)}); pass "
            "resume=True to continue it, overwrite=True to replace it, or choose another folder"
        )
    state = resume_state(out_dir) if resume else None  # a bad state fails before any work

    dataset = data if isinstance(data, Dataset) else load_dataset(data, modality)
    names = list(class_names) if class_names is not None else dataset.class_names
    dims = spatial_dims or (2 if all(c.labels.ndim == 2 for c in dataset.cases) else 3)
    if dims == 3 and any(c.labels.ndim == 2 for c in dataset.cases):
        raise ValueError("a 3D model cannot be trained on 2D images; use spatial_dims=2")
    top = max(int(c.labels[c.labels != IGNORE].max(initial=0)) for c in dataset.cases)
    if top >= len(names):
        raise ValueError(f"labels go up to {top} but only {len(names)} classes are named: {names}")

    # split (seeded), model spacing, preprocessing statistics from the training cases
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset.cases))
    n_val = min(max_val_cases, max(1, round(val_fraction * len(order)))) if len(order) > 1 else 0
    val_raw = [dataset.cases[i] for i in order[:n_val]]
    train_raw = [dataset.cases[i] for i in order[n_val:]]
    val_raw = val_raw or train_raw[:1]  # a single case validates on itself
    if init is not None:
        seg = init.copy().to(dev)
        seg.expect(spatial_dims=dims, class_names=names, source="the initial model")
    else:
        if spacing == "median":
            sp = model_spacing(train_raw, dims)
        else:
            sp = None if spacing is None else tuple(float(s) for s in spacing)
        torch.manual_seed(seed)
        seg = Segmenter.new(
            dims,
            names,
            modality=dataset.modality,
            config=config,
            in_channels=dataset.cases[0].image.shape[0],
            patch_size=patch_size or default_patch(train_raw, dims),
            spacing=sp,
            device=dev,
            **(model_kwargs or {}),
        )
        seg.preprocessing = seg.preprocessing.fit(
            [c.image for c in train_raw], [c.labels for c in train_raw], seed
        )
        seg.preprocessing.field_of_view = field_of_view(train_raw, dims, seg.spacing)
    train_cases = [prepare_case(c, seg.preprocessing, dims) for c in train_raw]
    val_cases = [prepare_case(c, seg.preprocessing, dims) for c in val_raw]

    model = seg.model
    opt = make_optimizer(model, lr, weight_decay, optimizer)
    sampler = PatchSampler(
        train_cases, seg.patch_size, dims, np.random.default_rng([seed, dist_info.rank])
    )
    gen = torch.Generator().manual_seed(seed * 1000 + dist_info.rank)
    if augment is True:
        aug = Augmentation(mirror=not lateral_classes(names))
    else:  # False/None: none; else a callable (x, y, generator) -> (x, y)
        aug = augment or None
    result = TrainResult(seg, 0)
    start = 0
    state_path = out_dir / STATE_FILE
    if state is not None:
        start = restore_train_state(state, state_path, names, dims, seg, opt, sampler, gen,
                                    result, dist_info.rank)
    base_version = seg.version
    if dev.type == "cuda":  # fused kernels + recomputation of the RVM layers' activations
        from napari_lightm.model.cuda_fast import enable_fast_path

        enable_fast_path(model, training=True)
    ddp = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    every = val_every or max(1, total // 10)
    t0 = time.time()

    def save_all(step: int) -> None:
        if not dist_info.main:
            return
        seg.version = base_version + 1
        seg.history = [*init.history] if init is not None else []
        seg.history.append(
            {
                "kind": "train",
                "time": now(),
                "steps": step,
                "batch_size": batch_size,
                "world_size": dist_info.world,
                "lr": lr,
                "optimizer": optimizer,
                "seed": seed,
                "data": str(data) if not isinstance(data, Dataset) else "in-memory",
                "train_cases": len(train_cases),
                "val_cases": len(val_cases),
                "best_val_dice": result.best_dice,
                "last_loss": result.losses[-1] if result.losses else None,
                "seconds": round(time.time() - t0, 1),
            }
        )
        result.last_path = seg.save(out_dir / "last.safetensors")
        tensors, info = train_state(step, names, dims, seg, opt, sampler, gen, result)
        save_train_state(state_path, tensors, info)

    resumed = f"resumed at step {start}; " if state is not None else ""
    yield Progress(start, total, "train", message=f"{resumed}{len(train_cases)} training cases")
    step = start
    for step in range(start + 1, total + 1):
        check(cancel)
        for group in opt.param_groups:
            group["lr"] = poly_lr(lr, step - 1, total)
        x, y = to_tensors(*sampler.batch(batch_size), dev)
        loss = train_step(ddp, opt, x, y, grad_clip=grad_clip, augment=aug, generator=gen)
        result.losses.append(loss)
        yield Progress(step, total, "train", loss=loss)
        if step % every == 0 or step == total:
            if dist_info.main:
                check(cancel)
                dice = validate(
                    model, val_cases[:max_val_cases], seg.patch_size, len(names), dims, cancel
                )
                result.val_dice.append((step, dice))
                improved = not (dice <= result.best_dice)  # first value, or better
                if improved:
                    result.best_dice = dice
                save_all(step)
                if improved:
                    result.best_path = seg.save(out_dir / "best.safetensors")
                yield Progress(step, total, "validate", message=f"validation Dice {dice:.4f}")
            if dist_info.world > 1:
                torch.distributed.barrier()
    result.steps = step
    if dist_info.world > 1 and dist_info.started_here:
        torch.distributed.destroy_process_group()
    return result


def train(
    data: str | Path | Dataset,
    out_dir: str | Path,
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Plain form of :func:`iter_train` (same arguments); returns the :class:`TrainResult`."""
    return drain(iter_train(data, out_dir, **kwargs), progress)


__all__ = [
    "DEFAULT_LR",
    "TrainResult",
    "iter_train",
    "make_optimizer",
    "poly_lr",
    "train",
    "train_step",
    "validate",
]
