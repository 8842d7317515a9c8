"""Segment: whole image, current slice, a drawn box, or every unreviewed slice.

Each action picks a region (what the model sees, ``infer``) and a sub-region it may
write (``write``), runs ``Segmenter.iter_predict`` in the widget's worker and, back
on the main thread, writes the prediction into the image's linked Labels layer as
one undo step that leaves every truth voxel (reviewed slices, painted voxels, click
discs) as it is. The labels are found by the image layer's identity, so renaming the
image while the job runs still writes into its labels.

"Segment unreviewed" runs the few-slice recipe's
:func:`~napari_lightm.engine.unreviewed.iter_predict_unreviewed` instead: the model
plus the shape interpolated between reviewed slices and a 3D clean-up, from a snapshot
of the labels and truth taken when the button is pressed (the same function the API
and ``lightm`` call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_lightm._napari._model_panel import NO_MODEL
from napari_lightm._napari._review import ensure_labels, find_labels, full_region

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext

#: depth of the slab a 3D model sees around one slice (context above and below)
SLAB_DEPTH = 16
#: in-plane context added around a drawn box (pixels); only the box is written
BOX_MARGIN = 16


class SegmentInputError(ValueError):
    """The image, box or model cannot be segmented as asked (message names why)."""


@dataclass
class Job:
    """One image to segment: the model sees ``infer``; ``write`` (inside it) is written."""

    image_layer: object
    image: np.ndarray
    geometry: object
    infer: tuple[slice, ...]
    write: tuple[slice, ...]
    #: "Segment unreviewed": the labels and truth (copies) the recipe reads
    labels: np.ndarray | None = None
    truth: np.ndarray | None = None

    def crop(self, prediction: np.ndarray) -> np.ndarray:
        """Cut the ``write`` region out of a prediction over ``infer``."""
        rel = tuple(
            slice(w.start - i.start, w.stop - i.start) for w, i in zip(self.write, self.infer)
        )
        return prediction[rel]


def layer_geometry(layer):
    """:class:`Geometry` from ``layer.metadata["geometry"]``, else built from its scale
    (in pixel units when napari's own units say so: an array added without a spacing)."""
    from napari_lightm.io.geometry import Geometry

    meta = layer.metadata.get("geometry")
    if meta:
        return Geometry.from_dict(meta)
    ndim = layer.data.ndim
    units = [str(u) for u in (getattr(layer, "units", None) or ())]
    return Geometry(
        spacing=tuple(float(s) for s in layer.scale[::-1][:ndim]),
        origin=tuple(float(t) for t in layer.translate[::-1][:ndim]),
        units="pixel" if units and all(u == "pixel" for u in units) else "mm",
    )


# --- pixel spacing of images without one (PNG, JPEG, TIFF X-rays) ---------------------
#: ``geometry["extra"]`` key of a spacing the widget set: False typed by the user
SPACING_SET_KEY = "spacing_estimated"


@dataclass
class SpacingState:
    """What the spacing field shows for an image: in-plane mm per pixel (None: unknown),
    whether the user may edit it, and a note saying where it comes from."""

    value: float | None
    editable: bool
    note: str


def spacing_state(layer, seg=None) -> SpacingState:
    """The in-plane pixel spacing of ``layer`` as the model will take it.

    A spacing read from the file is shown as it is (read only). An image without one
    (geometry units ``"pixel"``) gets the model's estimate (``Segmenter.input_spacing``:
    the image's shorter side fitted to the field of view it was trained on), editable;
    without a model that records a field of view it is unknown, never 1 mm per pixel.
    """
    geometry = layer_geometry(layer)
    extra = geometry.extra or {}
    if SPACING_SET_KEY in extra:
        how = "estimated" if extra[SPACING_SET_KEY] else "set by hand"
        return SpacingState(float(geometry.scale[-1]), True, f"pixel spacing {how}")
    if geometry.units != "pixel":
        return SpacingState(float(geometry.scale[-1]), False, "pixel spacing from the file")
    field_of_view = getattr(getattr(seg, "preprocessing", None), "field_of_view", None)
    if seg is not None and field_of_view:
        spacing, note = seg.input_spacing(layer.data.shape, geometry)
        return SpacingState(float(spacing[-1]), True, note or "")
    return SpacingState(
        None,
        True,
        "pixel spacing unknown (the file has none): pick an X-ray model, which estimates "
        "it from its field of view, or type it",
    )


def set_layer_spacing(viewer, layer, spacing_mm: float, estimated: bool = False):
    """Give ``layer`` an in-plane pixel spacing of ``spacing_mm`` (mm): its metadata
    geometry (what Segment, Click and Fine-tune read) and its napari ``scale``, and the
    same for its linked Labels layer so both stay aligned. Returns the new Geometry."""
    from napari_lightm.io.geometry import Geometry

    spacing_mm = float(spacing_mm)
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValueError(f"pixel spacing must be a positive number of mm, got {spacing_mm}")
    old = layer_geometry(layer)
    if not old.is_axis_aligned:
        raise ValueError(f"'{layer.name}' is oblique: its spacing comes from its header")
    n_plane = min(2, old.ndim)  # physical order (x, y[, z]): the in-plane axes come first
    spacing = (spacing_mm,) * n_plane + tuple(old.spacing[n_plane:])
    origin = tuple(o * s / p for o, s, p in zip(old.origin, spacing, old.spacing))
    extra = {**(old.extra or {}), SPACING_SET_KEY: bool(estimated)}
    new = Geometry(
        spacing,
        origin,
        old.direction,
        source=old.source,
        modality=old.modality,
        units="mm",
        intensity_unit=old.intensity_unit,
        extra=extra,
    )
    labels = find_labels(viewer, layer)  # before the image changes: linked by identity
    for target in (layer, labels):
        if target is None:
            continue
        target.metadata["geometry"] = new.to_dict()
        target.units = "mm"
        target.scale = new.scale
        target.translate = new.translate
    return new


def image_array(layer) -> np.ndarray:
    """The grey image of an Image layer as a numpy array; refuses RGB and 4D+."""
    if getattr(layer, "rgb", False):
        raise SegmentInputError(f"'{layer.name}' is RGB; LightM-UNet expects a grey image")
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3):
        raise SegmentInputError(f"'{layer.name}' has {data.ndim} dimensions; expected 2D or 3D")
    return data


def check_model(seg, image: np.ndarray, name: str) -> None:
    if seg is None:
        raise SegmentInputError(NO_MODEL)
    if seg.spatial_dims == 3 and image.ndim == 2:
        raise SegmentInputError(f"a 3D model cannot segment the 2D image '{name}'")


def current_index(viewer, layer) -> tuple[int, ...]:
    """The layer's data index (rounded, clipped) at the viewer's current dims point."""
    point = layer.world_to_data(viewer.dims.point)
    shape = layer.data.shape
    return tuple(
        int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(point[-len(shape) :], shape)
    )


def slab(z: int, depth: int, n: int) -> slice:
    """``depth`` slices centred on ``z``, clipped to ``[0, n)``."""
    start = max(0, min(z - depth // 2, n - depth))
    return slice(start, min(n, start + depth))


def slice_job(layer, image, geometry, z: int, spatial_dims: int) -> Job:
    """The current slice ``z``: a 2D model sees that slice, a 3D model a slab around it."""
    if image.ndim == 2:
        region = full_region(image.shape)
        return Job(layer, image, geometry, region, region)
    write = (slice(z, z + 1), slice(0, image.shape[1]), slice(0, image.shape[2]))
    infer = write if spatial_dims == 2 else (slab(z, SLAB_DEPTH, image.shape[0]), *write[1:])
    return Job(layer, image, geometry, infer, write)


def box_bounds(shapes_layer, image_layer) -> tuple[slice, ...]:
    """Bounding box (image data indices) of the last shape drawn in ``shapes_layer``."""
    if len(shapes_layer.data) == 0:
        raise SegmentInputError(f"draw a box in the Shapes layer '{shapes_layer.name}' first")
    vertices = np.asarray(shapes_layer.data[-1], float)
    corners = np.array([image_layer.world_to_data(shapes_layer.data_to_world(v)) for v in vertices])
    shape = image_layer.data.shape
    corners = corners[:, -len(shape) :]
    # vertices sit on pixel centres: round (not floor/ceil) against float noise
    lo = np.clip(np.round(corners.min(0)).astype(int), 0, np.array(shape) - 1)
    hi = np.clip(np.round(corners.max(0)).astype(int) + 1, 1, shape)
    if np.any(hi - lo < 1) or np.any((hi - lo)[-2:] < 4):
        raise SegmentInputError("the box is too small (at least 4 x 4 pixels inside the image)")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def box_job(layer, image, geometry, shapes_layer, spatial_dims: int) -> Job:
    """A drawn box: the model sees the box plus a margin (and a slab for 3D models)."""
    write = box_bounds(shapes_layer, layer)
    infer = []
    for axis, (s, n) in enumerate(zip(write, image.shape)):
        if image.ndim == 3 and axis == 0:
            depth = s.stop - s.start
            infer.append(
                slab((s.start + s.stop) // 2, max(depth, SLAB_DEPTH), n) if spatial_dims == 3 else s
            )
            if spatial_dims == 3:  # the slab must contain the written slices
                infer[-1] = slice(min(infer[-1].start, s.start), max(infer[-1].stop, s.stop))
        else:
            infer.append(slice(max(0, s.start - BOX_MARGIN), min(n, s.stop + BOX_MARGIN)))
    return Job(layer, image, geometry, tuple(infer), write)


def whole_job(layer, image, geometry) -> Job:
    region = full_region(image.shape)
    return Job(layer, image, geometry, region, region)


def unreviewed_job(widget: PluginContext, layer, image, geometry) -> Job:
    """A whole-image job that also carries the image's labels and truth (copies, so
    edits made while it runs are not half read); without a Labels layer both are empty."""
    job = whole_job(layer, image, geometry)
    labels_layer = find_labels(widget.viewer, layer)
    if labels_layer is not None and labels_layer.data.shape == image.shape:
        job.labels = np.array(labels_layer.data, copy=True)
        job.truth = widget.tracker.truth(labels_layer)
    return job


def find_shapes(viewer):
    """The active Shapes layer, else the top-most one, else None."""
    from napari.layers import Shapes

    active = viewer.layers.selection.active
    if isinstance(active, Shapes):
        return active
    for layer in reversed(list(viewer.layers)):
        if isinstance(layer, Shapes):
            return layer
    return None


def make_jobs(widget: PluginContext, mode: str) -> list[Job]:
    """Jobs for ``mode`` in ``{"image", "slice", "box", "unreviewed"}`` (main thread)."""
    seg = widget.model.segmenter
    if mode == "unreviewed":
        layers = widget.images_with_labels() or [widget.current_image()]
    else:
        layers = [widget.current_image()]
    jobs = []
    for layer in layers:
        if layer is None:
            raise SegmentInputError("open an image first")
        image = image_array(layer)
        check_model(seg, image, layer.name)
        geometry = layer_geometry(layer)
        if mode == "image":
            jobs.append(whole_job(layer, image, geometry))
        elif mode == "unreviewed":
            jobs.append(unreviewed_job(widget, layer, image, geometry))
        elif mode == "slice":
            z = current_index(widget.viewer, layer)[0]
            jobs.append(slice_job(layer, image, geometry, z, seg.spatial_dims))
        elif mode == "box":
            shapes = find_shapes(widget.viewer)
            if shapes is None:
                raise SegmentInputError("add a Shapes layer and draw a rectangle first")
            jobs.append(box_job(layer, image, geometry, shapes, seg.spatial_dims))
        else:
            raise ValueError(f"unknown segment mode {mode!r}")
    return jobs


def predict_jobs(seg, jobs: list[Job], cancel):
    """Generator (worker thread): yields Progress, returns the cropped predictions."""
    from napari_lightm.engine.unreviewed import iter_predict_unreviewed

    out = []
    for job in jobs:
        if job.truth is not None and job.truth.any():
            prediction = yield from iter_predict_unreviewed(
                seg, job.image, job.geometry, job.labels, job.truth, cancel=cancel
            )
        else:
            roi = None if job.infer == full_region(job.image.shape) else job.infer
            prediction = yield from seg.iter_predict(
                job.image, job.geometry, roi=roi, cancel=cancel
            )
        out.append(job.crop(np.asarray(prediction)))
    return out


def apply_predictions(widget: PluginContext, jobs: list[Job], predictions) -> int:
    """Write each prediction into its image's Labels layer (main thread), truth voxels
    excepted; voxels changed."""
    seg = widget.model.segmenter
    n_classes = len(seg.class_names) if seg is not None else 256
    changed = 0
    for job, prediction in zip(jobs, predictions):
        if job.image_layer not in widget.viewer.layers:  # removed while the job ran
            continue
        labels = ensure_labels(widget.viewer, job.image_layer, n_classes)
        if seg is not None:  # the names a DICOM-SEG export gives its segments
            labels.metadata["class_names"] = list(seg.class_names)
        widget.tracker.track(labels)
        changed += widget.tracker.write(labels, prediction, region=job.write)
        labels.refresh()
    widget.refresh_review()
    return changed


def done_message(changed: int) -> str:
    """What a finished segmentation says; an undo is offered only when something changed
    (a write that changes nothing makes no undo step)."""
    if changed == 0:
        return "segmentation done: nothing changed (0 voxels; truth voxels are kept as they are)"
    return f"segmentation written ({changed} voxels changed; Ctrl+Z undoes it)"


def start_segment(widget: PluginContext, mode: str) -> bool:
    """Gather inputs, start the worker; False (with a notification) on bad input."""
    from napari.utils.notifications import show_error, show_info

    try:
        jobs = make_jobs(widget, mode)
    except ValueError as exc:
        show_error(str(exc))
        return False
    seg = widget.model.segmenter

    def _done(predictions):
        n = apply_predictions(widget, jobs, predictions)
        show_info(done_message(n))

    widget.runner.start(f"segment {mode}", lambda token: predict_jobs(seg, jobs, token), _done)
    return True
