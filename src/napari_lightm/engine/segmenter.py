"""``Segmenter``: a LightM-UNet with its classes, preprocessing and history; predicts labels.

Prediction rules:

- The image is ``[*S]`` (one channel) or ``[C, *S]`` (``in_channels`` > 1), in array
  order, raw intensities (CT in HU). ``geometry`` (:class:`napari_lightm.io.Geometry`)
  gives the voxel spacing; without it the spacing is taken as 1 mm.
- A 2D model on a 3D image predicts slice by slice along axis 0. A 3D model on a 2D
  image is an error.
- ``roi``: a tuple of slices in image array coordinates (one per spatial axis; missing
  trailing axes mean the whole axis; step 1). Inference runs on the region plus a
  context margin of a quarter of the patch size per axis (none along the slice axis of
  a 2D model on a 3D image), clipped to the image, and returns labels for the region
  only. Intensity normalisation always uses the whole image (per-image z-score).
- Labels: ``uint8`` (``uint16`` beyond 256 classes); value ``i`` = ``class_names[i]``.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.engine.callbacks import CancelToken, Progress, ProgressCallback, drain
from napari_lightm.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from napari_lightm.engine.classes import checked_colours
from napari_lightm.engine.metadata import checked_weights, now
from napari_lightm.engine.preprocessing import (
    Preprocessing,
    array_spacing,
    estimate_spacing,
    spacing_is_known,
)

DEFAULT_PATCH = {2: (256, 256), 3: (64, 128, 128)}
OUTPUTS = ("labels", "proba", "logits")  # what iter_predict returns


def _match_device_path(model: Any) -> None:
    """On CUDA, the fast path of :mod:`napari_lightm.model.cuda_fast` (fused kernels,
    channels-last layout; same weights, same results to float rounding); elsewhere the
    plain modules."""
    from napari_lightm.model import cuda_fast

    params = next(model.parameters(), None)
    if params is not None and params.device.type == "cuda":
        cuda_fast.enable_fast_path(model)
    else:
        cuda_fast.disable_fast_path(model)


class Segmenter:
    """A LightM-UNet model plus everything needed to use it on an image.

    Build with :meth:`new` or :meth:`load`; predict with :meth:`predict` /
    :meth:`iter_predict` / :meth:`predict_proba`; save with :meth:`save`.

    Attributes:
        model: the :class:`~napari_lightm.model.LightMUNet` (on ``device``).
        config: configuration name (``"light"``, ``"repo"``, ``"custom"``).
        class_names: names per label value, index 0 = background.
        preprocessing: :class:`Preprocessing` (modality, spacing, intensity statistics).
        patch_size: training / inference window, array order, model spatial axes.
        version: 0 for a new model, +1 per training or fine-tuning run.
        history: one dict per training / fine-tuning run.
        class_colours: display colour per class (``"#rrggbb"``, None = the viewer's
            default); edited with :mod:`napari_lightm.engine.classes`.
        precision: CUDA inference precision, ``"tf32"`` (default), ``"bf16"`` or ``"fp32"``
            (:mod:`napari_lightm.engine.inference`); no effect on the CPU.
    """

    def __init__(
        self,
        model: Any,
        *,
        config: str,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        patch_size: Sequence[int],
        version: int = 0,
        history: Sequence[dict] = (),
    ):
        if len(class_names) != model.out_channels:
            raise ValueError(
                f"{len(class_names)} class names for a model with {model.out_channels} outputs"
            )
        if len(patch_size) != model.spatial_dims or any(int(p) % 8 for p in patch_size):
            raise ValueError(
                f"patch size {tuple(patch_size)} must have {model.spatial_dims} entries, "
                "each a multiple of 8"
            )
        self.model = model
        _match_device_path(model)
        self.config = config
        self.class_names = list(class_names)
        self.preprocessing = preprocessing
        self.patch_size = tuple(int(p) for p in patch_size)
        self.version = int(version)
        self.history = [dict(h) for h in history]
        self.precision = "tf32"
        # display colour per class ("#rrggbb"; None: the viewer's default), saved with it
        self.class_colours: list[str | None] = [None] * len(self.class_names)

    # --- construction -----------------------------------------------------------
    @classmethod
    def new(
        cls,
        spatial_dims: int,
        class_names: Sequence[str],
        modality: str = "CT",
        config: str = "light",
        in_channels: int = 1,
        patch_size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        device: Any = "auto",
        scan_backend: str | None = None,
        **model_kwargs: Any,
    ) -> Segmenter:
        """A new, untrained model.

        Args:
            spatial_dims: 2 or 3.
            class_names: at least two names; index 0 is the background.
            modality: ``"CT"``, ``"MR"`` or ``"XR"``.
            config: ``"light"`` (f=16) or ``"repo"`` (f=32).
            in_channels: image channels.
            patch_size: window (multiples of 8); default 256² (2D) / 64x128x128 (3D).
            spacing: model voxel size, array order (None = images as they are).
            device: see :func:`napari_lightm.engine.pick_device`.
            scan_backend: force a selective-scan backend (None = auto).
            **model_kwargs: override the config's LightMUNet arguments (e.g.
                ``init_filters=8``); the config is then called ``"custom"``.
        """
        from napari_lightm.engine.device import pick_device
        from napari_lightm.model import LightMUNet

        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        names = [str(n) for n in class_names]
        if len(names) < 2:
            raise ValueError("give at least two class names (background and one structure)")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        if spacing is not None and len(spacing) != spatial_dims:
            raise ValueError(f"spacing {tuple(spacing)} needs {spatial_dims} values")
        dev = pick_device(device)
        model = LightMUNet.from_config(
            config, spatial_dims, in_channels, len(names), scan_backend=scan_backend, **model_kwargs
        )
        pre = Preprocessing.default(modality, in_channels, spacing)
        seg = cls(
            model.to(dev).eval(),
            config=config if not model_kwargs else "custom",
            class_names=names,
            preprocessing=pre,
            patch_size=patch_size or DEFAULT_PATCH[spatial_dims],
        )
        seg.base_config = config
        return seg

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: Any = "auto",
        *,
        spatial_dims: int | None = None,
        class_names: Sequence[str] | None = None,
        in_channels: int | None = None,
        scan_backend: str | None = None,
    ) -> Segmenter:
        """Load a checkpoint (``.safetensors`` file or checkpoint folder).

        The optional ``spatial_dims`` / ``class_names`` / ``in_channels`` are what the
        caller needs; a checkpoint made for something else raises
        :class:`CheckpointError` naming the difference (as do missing or corrupt files).
        """
        from napari_lightm.engine.device import pick_device

        state, meta, file = load_checkpoint(path)
        seg = cls.from_metadata(state, meta, file, scan_backend=scan_backend)
        seg.expect(
            spatial_dims=spatial_dims, class_names=class_names, in_channels=in_channels, source=file
        )
        seg.to(pick_device(device))
        return seg

    @classmethod
    def from_metadata(
        cls, state: dict, meta: dict, file: Any = "checkpoint", scan_backend: str | None = None
    ) -> Segmenter:
        """A Segmenter from checkpoint ``meta`` and weights ``state``.

        Every metadata field is checked (types, ranges) and the weights' names and shapes
        are compared with the architecture the metadata describes before the model is
        built, so tampered metadata never allocates more than the weights in the file;
        raises :class:`CheckpointError` naming ``file`` and the field.
        """
        from napari_lightm.model import LightMUNet

        kwargs, names, patch = checked_weights(state, meta, file)
        arch = meta["architecture"]
        try:
            model = LightMUNet(**kwargs, scan_backend=scan_backend)
            pre = Preprocessing.from_dict(meta["preprocessing"])
            seg = cls(
                model,
                config=str(arch.get("config", "custom")),
                class_names=names,
                preprocessing=pre,
                patch_size=patch,
                version=meta.get("version", 0),
                history=meta.get("history", []),
            )
            model.load_state_dict(state, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {file} has unusable metadata: {err}") from err
        seg.base_config = str(arch.get("base_config", arch.get("config", "custom")))
        try:
            seg.class_colours = checked_colours(meta.get("class_colours"), len(names))
        except ValueError as err:
            raise CheckpointError(f"checkpoint {file} has unusable metadata: {err}") from err
        model.eval()
        return seg

    def expect(
        self,
        *,
        spatial_dims: int | None = None,
        class_names: Sequence[str] | None = None,
        in_channels: int | None = None,
        source: Any = "checkpoint",
    ) -> None:
        """Raise :class:`CheckpointError` when this model is not for the given data."""
        if spatial_dims is not None and spatial_dims != self.spatial_dims:
            raise CheckpointError(
                f"{source} is a {self.spatial_dims}D model; a {spatial_dims}D model is needed"
            )
        if class_names is not None and list(class_names) != self.class_names:
            raise CheckpointError(
                f"{source} segments classes {self.class_names}, not {list(class_names)}"
            )
        if in_channels is not None and in_channels != self.in_channels:
            raise CheckpointError(
                f"{source} takes {self.in_channels} input channel(s), not {in_channels}"
            )

    # --- properties ---------------------------------------------------------------
    @property
    def spatial_dims(self) -> int:
        return self.model.spatial_dims

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def modality(self) -> str:
        return self.preprocessing.modality

    @property
    def spacing(self) -> tuple[float, ...] | None:
        return self.preprocessing.spacing

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def backend(self) -> str:
        """Selective-scan backend the model uses on its device."""
        return self.model.scan_backend

    @property
    def labels_dtype(self) -> type:
        return np.uint8 if self.n_classes <= 256 else np.uint16

    def to(self, device: Any) -> Segmenter:
        """Move the model to ``device`` (in place); returns self."""
        from napari_lightm.engine.device import pick_device

        self.model.to(pick_device(device))
        _match_device_path(self.model)
        return self

    def copy(self) -> Segmenter:
        """An independent copy (weights, preprocessing and history), same device."""
        seg = Segmenter(
            copy.deepcopy(self.model),
            config=self.config,
            class_names=self.class_names,
            preprocessing=Preprocessing.from_dict(self.preprocessing.to_dict()),
            patch_size=self.patch_size,
            version=self.version,
            history=self.history,
        )
        seg.base_config = getattr(self, "base_config", self.config)
        seg.class_colours = list(self.class_colours)
        return seg

    def metadata(self) -> dict[str, Any]:
        """Checkpoint metadata (JSON-able)."""
        from napari_lightm import __version__

        return {
            "package_version": __version__,
            "architecture": {
                "name": "LightMUNet",
                "config": self.config,
                "base_config": getattr(self, "base_config", self.config),
                **self.model.config(),
            },
            "class_names": self.class_names,
            "class_colours": (list(self.class_colours) + [None] * self.n_classes)[
                : self.n_classes
            ],
            "modality": self.modality,
            "preprocessing": self.preprocessing.to_dict(),
            "patch_size": list(self.patch_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "version": self.version,
            "history": self.history,
            "saved": now(),
        }

    def info(self) -> dict[str, Any]:
        """A summary for people: config, classes, version, backend, device, patch, spacing."""
        from napari_lightm import __version__

        return {
            "config": self.config,
            "spatial_dims": self.spatial_dims,
            "classes": self.class_names,
            "modality": self.modality,
            "in_channels": self.in_channels,
            "version": self.version,
            "backend": self.backend,
            "device": str(self.device),
            "patch_size": list(self.patch_size),
            "spacing": None if self.spacing is None else list(self.spacing),
            "intensity": self.preprocessing.stats_from,
            "history_length": len(self.history),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "package_version": __version__,
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (``.safetensors`` file, or folder -> model.safetensors)."""
        return save_checkpoint(path, self.model.state_dict(), self.metadata())

    # --- input checks ---------------------------------------------------------------
    def check_compatible(self, image: np.ndarray, geometry: Any = None) -> None:
        """Raise ValueError naming what makes ``image`` unusable for this model."""
        from napari_lightm.engine.inference import check_image

        check_image(image, geometry, self.in_channels, self.spatial_dims)

    def input_spacing(
        self, shape: Sequence[int], geometry: Any = None
    ) -> tuple[tuple[float, ...], str | None]:
        """Array-order spacing (mm) the model takes an image of spatial ``shape`` to have,
        and a note for people when it was estimated rather than read.

        A known spacing is used as it is. An image without one (``units="pixel"``: PNG,
        JPEG, TIFF; or no geometry) given to a model that records its training field of
        view (X-ray models) is scaled to span that field of view
        (:func:`~napari_lightm.engine.preprocessing.estimate_spacing`), never taken as
        1 mm per pixel; other models take it as it is (1 mm).
        """
        shape = tuple(int(n) for n in shape)
        if spacing_is_known(geometry):
            return array_spacing(geometry, len(shape)), None
        model_axes = shape[-self.spatial_dims :]
        estimate = estimate_spacing(model_axes, self.preprocessing) if self.spacing else None
        if estimate is None:
            return array_spacing(geometry, len(shape)), None
        spacing = (*array_spacing(geometry, len(shape))[: len(shape) - len(model_axes)], *estimate)
        note = (
            f"pixel spacing unknown: estimated {estimate[-1]:.3g} mm by fitting the image's "
            f"shorter side to the model's {min(self.preprocessing.field_of_view):.0f} mm "
            "field of view"
        )
        return spacing, note

    # --- prediction -----------------------------------------------------------------
    def iter_predict(
        self,
        image: np.ndarray,
        geometry: Any = None,
        *,
        output: str = "labels",
        roi: Sequence[slice] | None = None,
        overlap: float = 0.5,
        tta: bool = False,
        cancel: CancelToken | None = None,
        tile_batch: int | None = None,
    ) -> Generator[Progress, None, np.ndarray]:
        """Yields :class:`Progress` per tile batch (``stage="predict"``); returns the
        prediction of the image, or of the ``roi``:

        - ``output="labels"``: class indices (``uint8``; ``uint16`` beyond 256 classes),
          the region's shape; a 2D model over a volume keeps only the labels of finished
          slices, never the logits of the whole volume;
        - ``"proba"``: softmax float32 ``[n_classes, *region]``;
        - ``"logits"``: float32 ``[n_classes, *region]``.

        Raises :class:`Cancelled` between tile batches when ``cancel`` is set, ValueError
        for an image the model cannot take (:meth:`check_compatible`).
        """
        from napari_lightm.engine.inference import iter_region_logits, normalize_roi

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.check_compatible(image, geometry)
        spatial = image.shape[1:] if self.in_channels > 1 else image.shape
        shape = tuple(r.stop - r.start for r in normalize_roi(roi, spatial))
        if output == "labels":
            out = np.empty(shape, self.labels_dtype)
        else:
            out = np.empty((self.n_classes, *shape), np.float32)

        def keep(part: tuple[slice, ...], logits: np.ndarray) -> None:
            if output == "labels":
                out[part] = logits.argmax(0)
                return
            if output == "proba":
                logits = logits - logits.max(0, keepdims=True)
                np.exp(logits, out=logits)
                logits /= logits.sum(0, keepdims=True)
            out[(slice(None), *part)] = logits

        yield from iter_region_logits(self, image, geometry, keep, roi=roi, overlap=overlap,
                                      tta=tta, cancel=cancel, tile_batch=tile_batch)
        return out

    def predict(
        self,
        image: np.ndarray,
        geometry: Any = None,
        *,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> np.ndarray:
        """:meth:`iter_predict` run to its end (same ``options``: ``output``, ``roi``,
        ``overlap``, ``tta``, ``cancel``, ``tile_batch``), reporting to ``progress``."""
        return drain(self.iter_predict(image, geometry, **options), progress)

    def iter_logits(self, image: np.ndarray, geometry: Any = None, **options: Any):
        """:meth:`iter_predict` with ``output="logits"``."""
        return self.iter_predict(image, geometry, output="logits", **options)

    def predict_proba(self, image: np.ndarray, geometry: Any = None, **options: Any):
        """:meth:`predict` with ``output="proba"``: class probabilities."""
        return self.predict(image, geometry, output="proba", **options)

    def __repr__(self) -> str:
        return (
            f"Segmenter({self.spatial_dims}D {self.config}, classes={self.class_names}, "
            f"modality={self.modality}, version={self.version}, device={self.device})"
        )


__all__ = ["DEFAULT_PATCH", "Segmenter"]
