"""Sliding-window inference with Gaussian weighting, tile by tile (progress + cancel).

The window loop is ours (so a generator can yield after every tile and check a cancel
token); the window grid (:func:`monai.inferers.utils.dense_patch_slices`) and the Gaussian
importance map (:func:`monai.data.utils.compute_importance_map`, sigma = 1/8 of the
window, as nnU-Net and MONAI) come from MONAI.

- Input ``[P, C, *S]``: ``P`` independent planes (1 for a native 2D/3D image, the slices
  along axis 0 for a 2D model on a 3D image), ``C`` channels, ``*S`` spatial.
- Spatial sizes are padded (constant 0, i.e. the normalised mean) to a multiple of 8 and
  at least the window; the window is the model's patch size, shrunk to the padded image.
- Mirroring TTA averages the logits over flips of every subset of spatial axes.
- A 2D model over a volume runs part by part (:data:`PART_VOXELS` slices at a time):
  each part is normalised with the whole image's statistics, resampled, predicted and
  handed to the caller, so memory stays that of one part however many slices the
  volume has (labels are written as parts finish; nothing else is whole-volume).
- On CUDA the default precision is ``"tf32"``: float32 activations, TF32 tensor-core
  matmuls and convolutions (what training uses too). ``"bf16"`` autocasts (measured slower
  with our fused kernels on an H200: docs/benchmarks.md), ``"fp32"`` keeps full-precision
  matmuls. The selective scan's state is float32 in every case. If a tile batch runs out
  of GPU memory it is halved and retried (down to 1).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import torch

from napari_lightm.engine.callbacks import CancelToken, Progress, check

DIVISOR = 8


def padded_size(
    size: Sequence[int], patch: Sequence[int], divisor: int = DIVISOR
) -> tuple[int, ...]:
    """Spatial size after padding: a multiple of ``divisor`` and at least ``patch``."""
    return tuple(max(math.ceil(s / divisor) * divisor, p) for s, p in zip(size, patch))


def window_size(
    size: Sequence[int], patch: Sequence[int], divisor: int = DIVISOR
) -> tuple[int, ...]:
    """Window: the patch, shrunk to the image (rounded up to ``divisor``) where it is smaller."""
    return tuple(min(p, math.ceil(s / divisor) * divisor) for s, p in zip(size, patch))


def window_slices(
    size: Sequence[int], window: Sequence[int], overlap: float
) -> list[tuple[slice, ...]]:
    """Window positions covering ``size`` with fractional ``overlap`` (0 <= overlap < 1)."""
    from monai.inferers.utils import dense_patch_slices

    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    interval = [max(1, int(w * (1 - overlap))) if w < s else s for s, w in zip(size, window)]
    return dense_patch_slices(tuple(size), tuple(window), tuple(interval))


def mirror_axes(spatial_dims: int, tta: bool) -> list[tuple[int, ...]]:
    """Flip combinations (tensor dims of ``[B, C, *S]``) averaged by mirroring TTA."""
    dims = range(2, 2 + spatial_dims)
    if not tta:
        return [()]
    return [c for r in range(spatial_dims + 1) for c in itertools.combinations(dims, r)]


GRAPH_MIN_CALLS = 8  # model calls from which sliding-window inference uses CUDA graphs


PRECISIONS = ("tf32", "bf16", "fp32")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str = "tf32"):
    """Inference precision on CUDA (see the module docstring); a no-op elsewhere.

    The TF32 switches are torch-global: they are set for the code inside and restored after.
    """
    _check_precision(precision)
    if device.type != "cuda":
        yield
        return
    keep = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32" or keep[1]
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        with torch.autocast(device_type="cuda", dtype=half, enabled=precision == "bf16"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = keep


def mirrored_logits(
    model: torch.nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]],
    precision: str = "tf32",
) -> torch.Tensor:
    """Logits ``[B, K, *W]`` float32 averaged over the mirror flips (``[()]`` = plain)."""
    total = None
    with torch.no_grad(), precision_context(x.device, precision):
        for f in flips:
            y = model(x.flip(f) if f else x).float()
            y = y.flip(f) if f else y
            total = y if total is None else total + y
    return total / len(flips)


def iter_sliding_window(
    model: torch.nn.Module,
    volume: torch.Tensor,
    patch_size: Sequence[int],
    n_classes: int,
    *,
    overlap: float = 0.5,
    tta: bool = False,
    tile_batch: int | None = None,
    precision: str = "tf32",
    cancel: CancelToken | None = None,
    stage: str = "predict",
    cuda_graphs: bool = True,
) -> Generator[Progress, None, torch.Tensor]:
    """Gaussian-weighted sliding-window logits, one :class:`Progress` per tile.

    Args:
        model: maps ``[B, C, *W] -> [B, n_classes, *W]`` (in eval mode).
        volume: ``[P, C, *S]`` float32 (any device; moved tile by tile).
        patch_size: window size per spatial axis.
        n_classes: logit channels.
        overlap: window overlap fraction (0.5 = nnU-Net / the authors).
        tta: mirroring test-time augmentation.
        tile_batch: tiles per forward; halves on OOM. Default: :func:`default_tile_batch`.
        precision: on CUDA, ``"tf32"``, ``"bf16"`` or ``"fp32"`` (module docstring).
        cancel: checked between tiles; raises :class:`Cancelled`.
        cuda_graphs: on CUDA, replay each tile batch shape from a captured CUDA graph
            (:class:`~napari_lightm.model.cuda_fast.GraphedInference`) when there are at
            least ``GRAPH_MIN_CALLS`` model calls.

    Returns (generator return value):
        logits ``[P, n_classes, *S]`` float32 on the CPU.
    """
    import torch.nn.functional as F
    from monai.data.utils import compute_importance_map

    device = next(model.parameters()).device
    _check_precision(precision)  # before any work (precision_context checks per batch)
    n_planes, _, *size = volume.shape
    nd = len(size)
    if len(patch_size) != nd:
        raise ValueError(f"patch size {tuple(patch_size)} does not match {nd} spatial axes")
    window = window_size(size, patch_size)
    padded = padded_size(size, window)
    pad = [p for s, t in zip(reversed(size), reversed(padded)) for p in (0, t - s)]
    if any(pad):
        volume = F.pad(volume, pad)
    slices = window_slices(padded, window, overlap)
    tiles = [(p, sl) for p in range(n_planes) for sl in slices]
    weight = compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device="cpu")
    weight = weight.clamp_min(max(float(weight.min()), 1e-3)).float()  # never divide by ~0
    # on a GPU with room for them, the volume and the weighted sums stay on the device (no
    # tile goes back and forth); else they live in host memory, as on the CPU
    home = _accumulation_device(device, volume.numel() + (n_classes + 1) * n_planes
                                * math.prod(padded))
    volume, weight = volume.to(home), weight.to(home)
    out = torch.zeros((n_planes, n_classes, *padded), dtype=torch.float32, device=home)
    norm = torch.zeros((n_planes, 1, *padded), dtype=torch.float32, device=home)
    flips = mirror_axes(nd, tta)
    batch = tile_batch or default_tile_batch(device, n_planes, window)
    # a capture costs about three forwards (two warm-ups and the recording); it pays off
    # over many model calls (3D 128^3 on an H200: 67 -> 54 ms a call; 2D 512^2: 33 -> 12 ms)
    calls = -(-len(tiles) // batch) * len(flips)
    graphed = device.type == "cuda" and cuda_graphs and calls >= GRAPH_MIN_CALLS
    if graphed:
        from napari_lightm.model.cuda_fast import GraphedInference

        model = GraphedInference(model)  # same results; no per-kernel launch cost

    done = 0
    yield Progress(0, len(tiles), stage)
    while done < len(tiles):
        check(cancel)
        chunk = tiles[done : done + batch]
        x = torch.stack([volume[(p, slice(None), *sl)] for p, sl in chunk])
        try:
            logits = mirrored_logits(model, x.to(device, torch.float32), flips, precision)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            if graphed:  # drop the captured graphs and their memory
                model = GraphedInference(model.model)
            torch.cuda.empty_cache()
            batch = max(1, batch // 2)  # smaller tiles batch, same windows
            continue
        logits = logits.to(home)
        for (p, sl), lg in zip(chunk, logits):
            out[(p, slice(None), *sl)] += lg * weight
            norm[(p, slice(None), *sl)] += weight
        done += len(chunk)
        yield Progress(done, len(tiles), stage)
    out /= norm
    crop = tuple(slice(0, s) for s in size)
    return out[(slice(None), slice(None), *crop)].cpu().contiguous()


#: voxels per forward pass when a 2D model predicts the slices of a volume (several slices
#: per pass: fewer, larger matrix products and scans)
SLICE_BATCH_VOXELS = {"cpu": 2**20, "cuda": 2**21}


def default_tile_batch(device: torch.device, n_planes: int, window: Sequence[int]) -> int:
    """Tiles per forward pass: for several planes (a 2D model over a volume) as many
    slices as fit :data:`SLICE_BATCH_VOXELS`; for one plane 4 on CUDA, 1 elsewhere."""
    cuda = device.type == "cuda"
    if n_planes <= 1:
        return 4 if cuda else 1
    voxels = SLICE_BATCH_VOXELS["cuda" if cuda else "cpu"]
    return max(1, min(n_planes, voxels // max(1, math.prod(window))))


ACCUMULATE_ON_GPU_FRACTION = 0.25  # of the free GPU memory the volume + sums may take


def _accumulation_device(device: torch.device, floats: int) -> torch.device:
    """Where sliding-window inference keeps the volume and its weighted sums: the GPU when
    ``floats`` float32 values fit in ``ACCUMULATE_ON_GPU_FRACTION`` of its free memory
    (measured end to end in benchmarks/gpu/bench_gpu.py's engine section), else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if 4 * floats <= ACCUMULATE_ON_GPU_FRACTION * free else torch.device("cpu")


def normalize_roi(roi: Sequence[slice] | None, size: Sequence[int]) -> tuple[slice, ...]:
    """``roi`` (slices in array coordinates, None = everything) -> one bounded slice per axis.

    Raises ValueError for steps other than 1, too many axes, or an empty region.
    """
    if roi is None:
        roi = ()
    if isinstance(roi, slice):
        roi = (roi,)
    roi = tuple(roi)
    if len(roi) > len(size):
        raise ValueError(f"roi has {len(roi)} axes, the image {len(size)}")
    out = []
    for axis, n in enumerate(size):
        s = roi[axis] if axis < len(roi) else slice(None)
        if not isinstance(s, slice):
            raise ValueError(f"roi must be a tuple of slices, got {roi!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"roi slices must have step 1, got {s}")
        if stop <= start:
            raise ValueError(f"roi {roi!r} is empty along axis {axis} (size {n})")
        out.append(slice(start, stop))
    return tuple(out)


def check_image(image: np.ndarray, geometry: Any, in_channels: int, spatial_dims: int) -> None:
    """Raise ValueError naming what makes ``image`` unusable for a model of
    ``in_channels`` and ``spatial_dims``."""
    if not isinstance(image, np.ndarray) or image.dtype.kind not in "biuf":
        raise ValueError(
            f"image must be a numeric numpy array, got {type(image).__name__}"
            + (f" of {image.dtype}" if isinstance(image, np.ndarray) else "")
        )
    spatial = image.ndim - (in_channels > 1)
    if in_channels > 1 and (image.ndim < 3 or image.shape[0] != in_channels):
        raise ValueError(
            f"the model takes {in_channels} channels as [C, *S]; "
            f"got an image of shape {image.shape}"
        )
    if spatial not in (2, 3):
        raise ValueError(f"expected a 2D or 3D grey image, got shape {image.shape}")
    if spatial < spatial_dims:
        raise ValueError(
            f"a 3D model cannot segment a 2D image (shape {image.shape}); use a 2D model"
        )
    if min(image.shape) < 1:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.dtype.kind == "f" and not all(
        np.isfinite(image[i : i + 16]).all() for i in range(0, image.shape[0], 16)
    ):  # in slabs: no whole-volume mask for a whole-body CT
        raise ValueError("image has NaN or infinite voxels")
    if geometry is not None and len(geometry.spacing) != spatial:
        raise ValueError(
            f"geometry has {len(geometry.spacing)} axes, the image {spatial} spatial axes"
        )


#: voxels per channel that :func:`iter_region_logits` normalises and predicts at once when
#: a 2D model segments the slices of a volume (about 64 MiB of float32 per copy on the
#: CPU); on a GPU most volumes are one part (one CUDA-graph capture)
PART_VOXELS = {"cpu": 2**24, "cuda": 2**27}
ROI_MARGIN_FRACTION = 0.25  # context around a roi, of the patch size per axis


def iter_region_logits(
    segmenter: Any,
    image: np.ndarray,
    geometry: Any,
    consume: Callable[[tuple[slice, ...], np.ndarray], None],
    *,
    roi: Sequence[slice] | None = None,
    overlap: float = 0.5,
    tta: bool = False,
    cancel: CancelToken | None = None,
    tile_batch: int | None = None,
) -> Generator[Progress, None, tuple[int, ...]]:
    """The prediction pipeline of :class:`~napari_lightm.engine.Segmenter` (its module
    docstring has the rules): normalisation with the whole image's statistics,
    resampling to the model's spacing, sliding windows, resampling back. ``image`` has
    passed ``segmenter.check_compatible`` (the caller's first step, before it allocates
    the output).

    Yields :class:`Progress` per tile batch over the whole region. Calls
    ``consume(part, logits)`` for each finished part: ``part`` indexes the region's
    spatial axes, ``logits`` is float32 ``[n_classes, *part shape]`` (the caller may keep
    or change it). Returns the region's spatial shape. Raises :class:`Cancelled`
    between tile batches when ``cancel`` is set.
    """
    from napari_lightm.engine.preprocessing import as_channels, resample_shape, resample_to

    pre = segmenter.preprocessing
    raw = as_channels(image, segmenter.in_channels)  # [C, *S], a view
    stats = pre.statistics(raw)
    size = raw.shape[1:]
    slice_mode = len(size) == 3 and segmenter.spatial_dims == 2
    region = normalize_roi(roi, size)
    margins = [
        0 if (slice_mode and a == 0)
        else int(segmenter.patch_size[a - slice_mode] * ROI_MARGIN_FRACTION)
        for a in range(len(size))
    ]
    context = tuple(
        slice(max(0, r.start - m), min(n, r.stop + m)) for r, m, n in zip(region, margins, size)
    )
    inner = tuple(slice(r.start - c.start, r.stop - c.start) for r, c in zip(region, context))
    spacing, _ = segmenter.input_spacing(size, geometry)
    segmenter.model.eval()

    def predict(
        planes: np.ndarray, step: int, n_steps: int
    ) -> Generator[Progress, None, np.ndarray]:
        """planes [P, C, *S] (normalised, native spacing) -> logits [P, K, *S]; part
        ``step`` of ``n_steps``."""
        in_plane = planes.shape[2:]
        planes = resample_to(planes, spacing[slice_mode:], segmenter.spacing, order=1,
                             antialias=True)
        windows = iter_sliding_window(
            segmenter.model, torch.from_numpy(np.ascontiguousarray(planes, np.float32)),
            segmenter.patch_size, segmenter.n_classes, overlap=overlap, tta=tta,
            cancel=cancel, tile_batch=tile_batch, precision=segmenter.precision,
        )
        while True:  # the part's progress as a share of the whole region's
            try:
                p = next(windows)
            except StopIteration as stop:
                return resample_shape(stop.value.numpy(), in_plane, order=1)
            yield Progress(step * p.total + p.done, p.total * n_steps, p.stage)

    if not slice_mode:
        x = pre.normalize(raw[(slice(None), *context)], stats)
        logits = yield from predict(x[None], 0, 1)
        consume(tuple(slice(None) for _ in size), logits[0][(slice(None), *inner)])
        return tuple(r.stop - r.start for r in region)
    z0, z1 = region[0].start, region[0].stop
    plane_voxels = raw.shape[0] * math.prod(r.stop - r.start for r in context[1:])
    device = next(segmenter.model.parameters()).device
    per_part = max(1, PART_VOXELS["cuda" if device.type == "cuda" else "cpu"] // plane_voxels)
    n_steps = -(-(z1 - z0) // per_part)
    for step, start in enumerate(range(z0, z1, per_part)):
        stop = min(z1, start + per_part)
        x = pre.normalize(raw[(slice(None), slice(start, stop), *context[1:])], stats)
        planes = np.ascontiguousarray(x.transpose(1, 0, 2, 3))  # [C, Z, ...] -> [Z, C, ...]
        del x
        logits = yield from predict(planes, step, n_steps)  # [Z, K, Y, X]
        del planes
        part = logits.transpose(1, 0, 2, 3)[(slice(None), slice(None), *inner[1:])]
        consume((slice(start - z0, stop - z0),), part)
    return tuple(r.stop - r.start for r in region)


__all__ = [
    "PART_VOXELS",
    "check_image",
    "iter_region_logits",
    "default_tile_batch",
    "iter_sliding_window",
    "mirror_axes",
    "normalize_roi",
    "padded_size",
    "window_size",
    "window_slices",
]
