"""Image geometry and its conversions, in one place for the reader, the writer and the engine.

Conventions:

- Arrays are in (z, y, x) / (y, x) order ("array order").
- SimpleITK / DICOM / NIfTI headers are in (x, y, z) order ("physical order", LPS
  for ITK). ``Geometry`` stores spacing, origin and direction in **physical
  order**, exactly as ``SimpleITK.Image`` reports them, so a header round-trips
  bit for bit; the ``scale`` / ``translate`` / ``affine`` properties give the
  napari (array-order) view.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# largest |D^T D - I| accepted for a direction matrix: far above the rounding of headers
# (NIfTI's float32 quaternion, DICOM's decimal strings), far below any real shear
ORTHONORMAL_ATOL = 1e-3


class GeometryError(ValueError):
    """A grid that cannot place an image in space (NaN, zero spacing, sheared axes, ...)."""


@dataclass
class Geometry:
    """Where an image array sits in physical space (mm), and what it is.

    Attributes:
        spacing: voxel size per axis, physical order (x, y[, z]), mm.
        origin: physical position of voxel 0, physical order, mm.
        direction: row-major ``ndim x ndim`` direction cosines (ITK convention).
        source: path the image came from (None for generated images).
        modality: ``"CT"``, ``"MR"``, ``"XR"`` or ``"unknown"``.
        units: length unit of spacing/origin: ``"mm"``, or ``"pixel"`` when the file
            carries no physical spacing (PNG/JPEG/TIFF, DICOM without pixel spacing).
        intensity_unit: e.g. ``"HU"`` for CT after rescale, else ``""``.
        extra: other JSON-able header facts worth keeping: ``"warnings"`` (list of
            one-line caveats found while reading, see :meth:`warn`), ``"format"``,
            DICOM series UID / description, ``"window"`` (center, width), ...
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    source: str | None = None
    modality: str = "unknown"
    units: str = "mm"
    intensity_unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise the fields to float tuples and refuse a grid no medical file can have.

        Refused (:class:`GeometryError`): spacing that is not positive and finite, a
        non-finite origin or direction, a direction that is not orthonormal (shear or
        scaling in it; tolerance :data:`ORTHONORMAL_ATOL`), mismatched lengths, and
        non-numeric values (tampered metadata). Called on construction; the writer
        calls it again because the fields of a dataclass can be reassigned.
        """
        if any(isinstance(v, str | bytes) for v in (self.spacing, self.origin, self.direction)):
            raise GeometryError("geometry values are not numbers (text instead of a list)")
        try:
            spacing = tuple(float(s) for s in self.spacing)
            n = len(spacing)
            origin = tuple(
                float(o) for o in (self.origin if self.origin is not None else (0.0,) * n)
            )
            direction = (
                np.eye(n).ravel()
                if self.direction is None
                else np.asarray(self.direction, dtype=float).ravel()
            )
        except (TypeError, ValueError) as err:
            raise GeometryError(f"geometry values are not numbers ({err})") from None
        if n == 0:
            raise GeometryError("geometry without spacing (0 dimensions)")
        if len(origin) != n or direction.size != n * n:
            raise GeometryError(
                f"inconsistent geometry: spacing {spacing}, origin {origin}, "
                f"direction of {direction.size} values"
            )
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise GeometryError(f"spacing must be positive and finite, got {spacing}")
        if not np.all(np.isfinite(origin)):
            raise GeometryError(f"origin must be finite, got {origin}")
        if not np.all(np.isfinite(direction)):
            raise GeometryError(f"direction must be finite, got {tuple(direction.tolist())}")
        matrix = direction.reshape(n, n)
        if not np.allclose(matrix.T @ matrix, np.eye(n), rtol=0, atol=ORTHONORMAL_ATOL):
            raise GeometryError(
                "direction is not a rotation or flip (sheared or scaled axes): "
                f"{tuple(round(v, 6) for v in direction.tolist())}"
            )
        for name in ("modality", "units", "intensity_unit"):
            if not isinstance(getattr(self, name), str):
                raise GeometryError(f"geometry {name} must be text, got {getattr(self, name)!r}")
        if self.source is not None and not isinstance(self.source, str):
            self.source = str(self.source)
        if not isinstance(self.extra, dict):
            raise GeometryError(
                f"geometry extra must be a mapping, got {type(self.extra).__name__}"
            )
        self.spacing, self.origin = spacing, origin
        self.direction = tuple(direction.tolist())

    # --- array-order views (napari) -------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.spacing)

    @property
    def scale(self) -> tuple[float, ...]:
        """Spacing in array order (napari ``scale``)."""
        return self.spacing[::-1]

    @property
    def translate(self) -> tuple[float, ...]:
        """Origin in array order (napari ``translate``)."""
        return self.origin[::-1]

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction cosines, physical order, ``[ndim, ndim]``."""
        return np.asarray(self.direction, dtype=float).reshape(self.ndim, self.ndim)

    @property
    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(self.ndim)))

    @property
    def affine(self) -> np.ndarray:
        """Homogeneous array-order affine mapping voxel indices (z, y, x) to physical
        coordinates in array order: ``world = R diag(scale) idx + translate``.

        napari composes ``affine`` after ``scale``/``translate``; the reader gives napari
        this full matrix as ``affine`` (with unit scale) only when the direction is not
        the identity.
        """
        n = self.ndim
        flip = np.eye(n)[::-1]  # physical order <-> array order
        rot = flip @ self.direction_matrix @ flip
        out = np.eye(n + 1)
        out[:n, :n] = rot @ np.diag(self.scale)
        out[:n, n] = self.translate
        return out

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a napari layer placed in this geometry."""
        kwargs: dict[str, Any] = {"units": self.units, "metadata": {"geometry": self.to_dict()}}
        if self.is_axis_aligned:
            kwargs.update(scale=self.scale, translate=self.translate)
        else:
            kwargs["affine"] = self.affine
        return kwargs

    # --- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing"], d["origin"], d["direction"] = (
            list(self.spacing),
            list(self.origin),
            list(self.direction),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict`; metadata that is not a valid geometry (tampered,
        truncated, NaN, sheared) raises :class:`GeometryError`."""
        if not isinstance(d, dict):
            raise GeometryError(f"geometry metadata must be a mapping, got {type(d).__name__}")
        if d.get("spacing") is None:
            raise GeometryError("geometry metadata without spacing")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_layer(
        cls,
        scale: tuple[float, ...] | np.ndarray,
        translate: tuple[float, ...] | np.ndarray | None = None,
        affine: np.ndarray | None = None,
        **kw: Any,
    ) -> Geometry:
        """Inverse of :meth:`layer_kwargs`: the geometry of a napari layer's transforms.

        napari maps a data index ``i`` (array order) to world coordinates as
        ``affine @ (scale * i + translate)``. The combined linear part must be a
        rotation/flip times a positive diagonal (no shear); raises ``ValueError`` if not.

        Args:
            scale, translate: array-order, as on the layer (``translate`` defaults to 0).
            affine: ``[n+1, n+1]`` homogeneous matrix or ``None`` for identity.
            **kw: other ``Geometry`` fields (``modality``, ``source``, ...).
        """
        scale = np.asarray(scale, dtype=float)
        n = scale.size
        translate = np.zeros(n) if translate is None else np.asarray(translate, dtype=float)
        a = np.eye(n + 1) if affine is None else np.asarray(affine, dtype=float)
        linear = a[:n, :n] @ np.diag(scale)
        offset = a[:n, :n] @ translate + a[:n, n]
        spacing = np.linalg.norm(linear, axis=0)
        rot = linear / spacing
        if not np.allclose(rot.T @ rot, np.eye(n), atol=1e-5):
            raise ValueError("layer transform has shear; it cannot be written as a medical header")
        flip = np.eye(n)[::-1]
        return cls(
            spacing=tuple(spacing[::-1]),
            origin=tuple(offset[::-1]),
            direction=tuple((flip @ rot @ flip).ravel()),
            **kw,
        )

    def allclose(self, other: Geometry, atol: float = 1e-6) -> bool:
        """Same grid (ndim, spacing, origin, direction) within ``atol``."""
        return (
            self.ndim == other.ndim
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=atol)
        )

    def warn(self, message: str) -> None:
        """Record a reading caveat in ``extra["warnings"]`` (shown to the user) and log it."""
        import logging

        self.extra.setdefault("warnings", []).append(message)
        logging.getLogger("napari_lightm.io").warning(message)

    @classmethod
    def identity(cls, ndim: int, spacing: float | tuple[float, ...] = 1.0, **kw: Any) -> Geometry:
        sp = (spacing,) * ndim if np.isscalar(spacing) else tuple(spacing)
        return cls(spacing=sp, **kw)

    # --- SimpleITK ------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: Any, **kw: Any) -> Geometry:
        return cls(
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            **kw,
        )

    def apply_to_sitk(self, image: Any) -> Any:
        """Copy spacing, origin and direction onto a ``SimpleITK.Image``; returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def resample(
    array: np.ndarray,
    src_spacing: tuple[float, ...],
    dst_spacing: tuple[float, ...] | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    order: int = 1,
) -> np.ndarray:
    """Resample an array-order array from ``src_spacing`` to ``dst_spacing`` (or to ``shape``).

    Spacings are in **array order**. ``order=0`` (nearest) for labels, ``1`` (linear)
    for images and logits. Leading channel axes are allowed: the spatial axes are the
    last ``len(src_spacing)``. Output shape = ``round(shape * src / dst)`` unless
    ``shape`` is given. Returns the input itself when nothing changes.
    """
    from scipy import ndimage

    nsp = len(src_spacing)
    spatial = array.shape[-nsp:]
    if shape is None:
        if dst_spacing is None:
            raise ValueError("give dst_spacing or shape")
        shape = tuple(
            max(1, int(round(n * s / d))) for n, s, d in zip(spatial, src_spacing, dst_spacing)
        )
    shape = tuple(int(s) for s in shape)
    if shape == tuple(spatial):
        return array
    zoom = [1.0] * (array.ndim - nsp) + [o / i for o, i in zip(shape, spatial)]
    work = array if order == 0 or array.dtype.kind == "f" else array.astype(np.float32)
    out = ndimage.zoom(work, zoom, order=order, mode="nearest", grid_mode=True)
    # zoom can be off by one through rounding; crop/pad to the exact shape
    if out.shape[-nsp:] != shape:
        slices = [slice(None)] * (array.ndim - nsp) + [slice(0, s) for s in shape]
        out = out[tuple(slices)]
        pad = [(0, 0)] * (array.ndim - nsp) + [(0, s - o) for s, o in zip(shape, out.shape[-nsp:])]
        out = np.pad(out, pad, mode="edge")
    return out


__all__ = ["ORTHONORMAL_ATOL", "Geometry", "GeometryError", "resample"]
