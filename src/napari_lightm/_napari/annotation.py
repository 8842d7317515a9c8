"""The annotation state of a labels array: what is truth, and how undo changes it.

Qt-free and napari-free (napari's Labels history items are read by duck typing), so it
is tested without a viewer; ``_review`` wires it to napari layers and events.

*Truth* supervises fine-tuning, and no model write may change it. It is

- the *reviewed* slices (axis 0 of a volume; the whole image in 2D): slices the user
  marked as checked, fully labelled there (0 = background), and
- the *marked* voxels: voxels the user painted or erased (those a paint changed), and
  the small disc around each click (:func:`click_disc`).

Both live in the Labels layer's metadata, so they travel with the layer:
``metadata[REVIEWED_KEY]`` (bool ``[n_slices]``) and ``metadata[MARKED_KEY]`` (bool,
the labels' shape, created on the first mark). Each undoable step that marked voxels
keeps only the flat indices it marked (:class:`TruthHistory`), so undo and redo put
the marked voxels back as they were with that step.

A Labels layer is linked to its image by the image layer's identity
(``metadata[IMAGE_ID_KEY]``), not its name; ``metadata[IMAGE_KEY]`` keeps the image's
name (current when looked up) for layers and sessions that link by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REVIEWED_KEY = "lightm_reviewed"
MARKED_KEY = "lightm_marked"
IMAGE_KEY = "lightm_image"
IMAGE_ID_KEY = "lightm_image_id"
#: radius (pixels, in the clicked slice's plane) of the disc a click makes truth
CLICK_RADIUS = 3


class ShapeMismatchError(ValueError):
    """A labels array or mask whose shape does not match its image."""


def labels_dtype(n_classes: int) -> np.dtype:
    """uint8 up to 256 classes, uint16 beyond (napari semantic-labels convention)."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


def n_slices(shape: tuple[int, ...]) -> int:
    """Reviewable units of an image: axis-0 slices of a volume, 1 for a 2D image."""
    return shape[0] if len(shape) == 3 else 1


def full_region(shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def region_shape(region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for s, n in zip(region, shape))


def flat_indices(mask: np.ndarray, region: tuple[slice, ...], shape) -> np.ndarray:
    """Flat indices into an array of ``shape`` of the True voxels of ``mask`` (over ``region``)."""
    full = region_indices(mask, region, shape)
    return _compact(np.ravel_multi_index(full, shape) if full else np.zeros(0, np.intp), shape)


def index_dtype(n: int) -> np.dtype:
    """The smallest unsigned integer type that indexes an axis of ``n`` voxels."""
    for dtype in (np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def region_indices(
    mask: np.ndarray, region: tuple[slice, ...], shape: tuple[int, ...], slab: int = 16
) -> tuple[np.ndarray, ...]:
    """Array indices (one array per axis, as ``np.nonzero``) into ``shape`` of the True
    voxels of ``mask`` (over ``region``), each in the smallest type its axis needs:
    napari keeps them in its undo history, so 5 M changed voxels of a CT cost 6 bytes
    each (uint16) instead of 24 (int64). Found ``slab`` planes at a time, so no int64
    indices of the whole change exist even for a moment."""
    starts = [s.indices(n)[0] for s, n in zip(region, shape)]
    dtypes = [index_dtype(n) for n in shape]
    counts = [int(np.count_nonzero(mask[z : z + slab])) for z in range(0, mask.shape[0], slab)]
    out = tuple(np.empty(sum(counts), d) for d in dtypes)
    at = 0
    for z, count in zip(range(0, mask.shape[0], slab), counts):
        if count:
            for axis, i in enumerate(np.nonzero(mask[z : z + slab])):
                out[axis][at : at + count] = i + (starts[axis] + (z if axis == 0 else 0))
            at += count
    return out


def _compact(flat: np.ndarray, shape) -> np.ndarray:
    """Flat indices as uint32 when the array is small enough (undo deltas stay small)."""
    dtype = np.uint32 if int(np.prod(shape)) <= np.iinfo(np.uint32).max else np.int64
    return np.asarray(flat).astype(dtype, copy=False)


class Annotation:
    """Reviewed flags and marked voxels of one labels array, kept in a metadata dict.

    Args:
        metadata: the Labels layer's metadata; arrays are created in it lazily and
            replaced when their shape no longer fits ``shape``.
        shape: the labels' shape, ``(z, y, x)`` or ``(y, x)``.
    """

    def __init__(self, metadata: dict, shape: Sequence[int]):
        self.metadata = metadata
        self.shape = tuple(int(n) for n in shape)

    @property
    def reviewed(self) -> np.ndarray:
        """Bool ``[n_slices]`` flags, stored in the metadata (edit in place)."""
        flags = self.metadata.get(REVIEWED_KEY)
        n = n_slices(self.shape)
        if flags is None or len(flags) != n:
            flags = np.zeros(n, bool)
            self.metadata[REVIEWED_KEY] = flags
        elif not (isinstance(flags, np.ndarray) and flags.dtype == bool):
            flags = np.asarray(flags, bool)
            self.metadata[REVIEWED_KEY] = flags
        return flags

    def marked(self, create: bool = False) -> np.ndarray | None:
        """Bool mask of the marked voxels (labels shape); None when nothing was ever marked."""
        mask = self.metadata.get(MARKED_KEY)
        if mask is not None and tuple(np.shape(mask)) != self.shape:
            mask = None  # the labels were replaced by an array of another shape
        if mask is None and create:
            mask = np.zeros(self.shape, bool)
        if mask is not None and not (mask.dtype == bool and mask.flags.c_contiguous):
            mask = np.ascontiguousarray(mask, bool)  # marks are written through a flat view
        if mask is not None:
            self.metadata[MARKED_KEY] = mask
        elif MARKED_KEY in self.metadata:
            del self.metadata[MARKED_KEY]
        return mask

    def set_marked_mask(self, mask: np.ndarray | None) -> None:
        """Replace the marked voxels (e.g. from a saved session); None clears them."""
        if mask is None:
            self.metadata.pop(MARKED_KEY, None)
            return
        mask = np.asarray(mask, bool)
        if mask.shape != self.shape:
            raise ShapeMismatchError(f"truth mask shape {mask.shape} != labels {self.shape}")
        self.metadata[MARKED_KEY] = mask.copy()

    def reviewed_voxels(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Bool mask over ``region`` (default: everything) of the reviewed slices."""
        region = full_region(self.shape) if region is None else region
        shape = region_shape(region, self.shape)
        flags = self.reviewed
        if len(self.shape) == 3:
            return np.broadcast_to(flags[region[0]][:, None, None], shape).copy()
        return np.full(shape, bool(flags[0]))

    def truth(self, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Bool mask over ``region``: reviewed slices OR marked voxels (a new array)."""
        region = full_region(self.shape) if region is None else region
        out = self.reviewed_voxels(region)
        marked = self.marked()
        if marked is not None:
            out |= marked[region]
        return out

    def has_truth(self) -> bool:
        marked = self.marked()
        return bool(self.reviewed.any()) or (marked is not None and bool(marked.any()))

    def n_marked(self) -> int:
        marked = self.marked()
        return 0 if marked is None else int(np.count_nonzero(marked))

    def set_reviewed(self, slices: Iterable[int], value: bool = True) -> bool:
        """Set the flags of ``slices`` (out-of-range ones are ignored); True if any changed."""
        flags = self.reviewed
        idx = [int(s) for s in slices if 0 <= int(s) < len(flags)]
        if not idx or bool((flags[idx] == value).all()):
            return False
        flags[idx] = value
        return True

    def unmarked(self, flat: np.ndarray) -> np.ndarray:
        """Those of the flat indices ``flat`` that are not marked yet (unique, sorted)."""
        flat = np.unique(np.asarray(flat))
        marked = self.marked()
        if marked is not None and flat.size:
            flat = flat[~marked.reshape(-1)[flat]]
        return _compact(flat, self.shape)

    def set_marked(self, flat: np.ndarray, value: bool = True) -> None:
        """Mark (or unmark) the voxels at flat indices ``flat``."""
        if np.size(flat) == 0:
            return
        mask = self.marked(create=value)
        if mask is not None:
            mask.reshape(-1)[np.asarray(flat)] = value

    def finetune_sample(self, image: np.ndarray, labels: np.ndarray, geometry: Any = None):
        """A :class:`~napari_lightm.engine.FinetuneSample` that learns from the truth only
        (a copy of ``labels``; every other voxel is ignored by the loss)."""
        from napari_lightm.engine import FinetuneSample

        return FinetuneSample(image, np.array(labels, copy=True), self.truth(), geometry)


def changed_voxels(item: Iterable[Any], shape: Sequence[int]) -> np.ndarray:
    """Flat indices of the voxels one napari Labels history item changed.

    An item is a list of atoms: a masked atom (``slice_key``: bounding box, ``mask``:
    the changed voxels in it, or None when all changed; paint, fill, polygon) or an
    ``(indices, old_values, new_values)`` tuple (``data_setitem``).
    """
    shape = tuple(shape)
    parts = []
    for atom in item or ():
        key = getattr(atom, "slice_key", None)
        if key is not None:
            box = tuple(key) + tuple(slice(None) for _ in range(len(shape) - len(key)))
            box_shape = region_shape(box, shape)
            mask = getattr(atom, "mask", None)
            mask = np.ones(box_shape, bool) if mask is None else np.asarray(mask, bool)
            parts.append(flat_indices(mask.reshape(box_shape), box, shape))
        else:
            indices = tuple(np.asarray(i).reshape(-1) for i in atom[0])
            parts.append(np.ravel_multi_index(indices, shape))
    if not parts:
        return _compact(np.zeros(0, np.intp), shape)
    return _compact(np.unique(np.concatenate([np.asarray(p, np.int64) for p in parts])), shape)


@dataclass
class _Step:
    """One undoable edit: its napari history atoms and the voxels it marked."""

    atoms: list  # strong references: their ids name the step after undo/redo reversal
    added: np.ndarray  # flat indices this step marked (they were unmarked before it)
    applied: bool = True


@dataclass
class TruthHistory:
    """Keeps the marked voxels in step with one napari Labels undo history.

    Every history item gets a step (:meth:`pushed`); undo and redo are found by
    comparing the steps with napari's undo / redo stacks (:meth:`sync`), which hold
    the same atom objects (an undone item comes back reversed). Because undo is LIFO,
    the marked voxels are always: those outside any step, plus those of the steps
    napari counts as done. A step that left napari's history (its length limit)
    stays applied; an undone step that a new edit discarded is dropped undone.
    """

    steps: list[_Step] = field(default_factory=list)
    _index: dict[int, int] = field(default_factory=dict)
    _undo_stack: Any = None

    def _step_of(self, item) -> int | None:
        return self._index.get(id(item[0])) if item else None

    def _reindex(self) -> None:
        self._index = {id(a): i for i, step in enumerate(self.steps) for a in step.atoms}

    def sync(self, annotation: Annotation, undo: Sequence, redo: Sequence) -> bool:
        """Apply / take back the steps napari has redone / undone since the last sync;
        True if any marks changed."""
        if self._undo_stack is not None and undo is not self._undo_stack:
            self.steps = []  # napari reset its history: what is applied stays
            self._index = {}
        self._undo_stack = undo
        if not self.steps:
            return False
        changed = False
        done = {i for i in map(self._step_of, undo) if i is not None}
        undone = {i for i in map(self._step_of, redo) if i is not None}
        oldest = min(done) if done else len(self.steps)
        kept = []
        for i, step in enumerate(self.steps):
            if i in done or i in undone:
                applied, keep = i in done, True
            else:  # gone from napari's history: fell off its end, or undone then discarded
                applied, keep = i < oldest, False
            if step.applied != applied:
                annotation.set_marked(step.added, applied)
                step.applied = applied
                changed = changed or step.added.size > 0
            if keep:
                kept.append(step)
        if len(kept) != len(self.steps):
            self.steps = kept
            self._reindex()
        return changed

    def pushed(
        self,
        annotation: Annotation,
        item: Sequence,
        undo: Sequence,
        redo: Sequence,
        added: np.ndarray | None = None,
    ) -> int:
        """Record the new history ``item``; mark ``added`` (flat indices), by default the
        voxels the item changed that were not marked yet (a user's paint). Returns the
        number of voxels newly marked."""
        self.sync(annotation, undo, redo)
        if not item or self._step_of(item) is not None:
            return 0  # empty, or an item napari re-announced (undo / redo)
        if added is None:
            added = annotation.unmarked(changed_voxels(item, annotation.shape))
        else:
            added = annotation.unmarked(added)
        annotation.set_marked(added, True)
        self.steps.append(_Step(list(item), added))
        self._index.update((id(a), len(self.steps) - 1) for a in item)
        return int(added.size)

    def forget(self) -> None:
        """Drop every step (what is marked stays marked)."""
        self.steps = []
        self._index = {}
        self._undo_stack = None


def click_disc(
    shape: Sequence[int],
    index: Sequence[int],
    region: tuple[slice, ...] | None = None,
    radius: int = CLICK_RADIUS,
) -> np.ndarray:
    """Bool mask over ``region`` (default: the whole array) of the disc a click at
    ``index`` makes truth: ``radius`` pixels around it in the clicked slice's plane."""
    shape = tuple(shape)
    region = full_region(shape) if region is None else region
    size = region_shape(region, shape)
    rel = [int(i) - s.indices(n)[0] for i, s, n in zip(index, region, shape)]
    yy, xx = np.ogrid[0 : size[-2], 0 : size[-1]]
    disc = (yy - rel[-2]) ** 2 + (xx - rel[-1]) ** 2 <= radius**2
    out = np.zeros(size, bool)
    if len(shape) == 3:
        if 0 <= rel[0] < size[0]:
            out[rel[0]] = disc
    else:
        out[:] = disc
    return out


def links_to(
    labels_metadata: dict,
    labels_shape: Sequence[int],
    image_id: str,
    image_name: str,
    image_shape: Sequence[int],
    open_image_ids: set[str],
) -> str | None:
    """How a Labels layer links to an image: ``"id"`` (by the image layer's identity),
    ``"name"`` (a layer linked by name only, or whose image is no longer open, with the
    image's name and shape: it may be adopted), or None."""
    linked = labels_metadata.get(IMAGE_ID_KEY)
    if linked is not None and linked == image_id:
        return "id"
    if linked is not None and linked in open_image_ids:
        return None  # linked to another open image
    same_shape = tuple(labels_shape) == tuple(image_shape)
    if labels_metadata.get(IMAGE_KEY) == image_name and same_shape:
        return "name"
    return None
