"""Session folders: labels, reviewed slices, image paths and the model, to continue later.

Layout of a session folder (format version 2)::

    session.json                     the manifest: images, model, and every file it owns
    labels_00-<id>.npy               labels of image 0 (exact dtype)
    reviewed_00-<id>.npy             bool [n_slices] reviewed flags of image 0
    marked_00-<id>.npy               bool, labels' shape: voxels the user painted or
                                     clicked (truth outside reviewed slices); optional
    image_00-<id>.npy                the image itself, only when it has no source file
    model_v003-<id>.safetensors      the model in use (``Segmenter.save``)

``<id>`` is new for every save. A save writes all new files first, then replaces
``session.json`` atomically (that rename is the commit), then deletes the files the old
manifest listed and the new one does not. A kill at any moment therefore leaves a folder
that reads as the complete old session or the complete new one. The files of both are
listed in a hidden ``.session-pending.json`` before anything is written, so the next save
removes what a killed save left. Nothing else in the folder is ever deleted or replaced.

Version 1 folders (fixed names ``labels_00.npy``, no file list) are still read, and a save
over one replaces its files the same way.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io.atomic import TMP_SUFFIX, atomic_write, atomic_write_text

SESSION_FILE = "session.json"
PENDING_FILE = ".session-pending.json"
FORMAT = "napari-lightm session"
FORMAT_VERSION = 2
#: names a session may own: plain file names, no folders, no leading dot, no wildcards
_OWNED_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_CHECKPOINT_SIDECAR_FORMAT = "napari-lightm checkpoint"


class SessionError(ValueError):
    """A folder that is not a readable napari-lightm session (one line naming the file)."""


@dataclass
class SessionImage:
    """One image of a session and its annotation state."""

    name: str
    labels: np.ndarray
    reviewed: np.ndarray
    source: str | None = None
    image: np.ndarray | None = None  # kept only when there is no source file
    geometry: dict[str, Any] | None = None
    layer: dict[str, Any] = field(default_factory=dict)  # scale / translate of the layer
    marked: np.ndarray | None = None  # bool, labels' shape: painted voxels and click discs


@dataclass
class SessionModel:
    name: str
    version: int
    checkpoint: Path


def n_slices(shape: tuple[int, ...]) -> int:
    """Reviewable units of an image: axis-0 slices of a volume, 1 for a 2D image."""
    return shape[0] if len(shape) == 3 else 1


# --- writing ----------------------------------------------------------------------------
def write_session(
    folder: str | Path, images: list[SessionImage], seg=None, model_name: str = ""
) -> Path:
    """Write a session into ``folder`` (created if needed); returns the ``session.json`` path.

    ``seg`` (a Segmenter, optional) is saved with it so the session is self-contained.
    The previous session in ``folder`` stays readable until the new one is complete.

    Raises:
        SessionError: ``folder`` holds a ``session.json`` that is not a napari-lightm
            session (it is left alone).
        OSError: the disk refused a write (read-only, full); the old session is intact.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old_files = _owned_files(folder)
    _remove_unfinished(folder, keep=old_files)
    save_id = _new_save_id(folder)
    entries, arrays = [], {}
    for i, item in enumerate(images):
        labels = np.asarray(item.labels)
        entry: dict[str, Any] = {
            "name": str(item.name),
            "source": None if item.source is None else str(item.source),
            "labels_file": f"labels_{i:02d}-{save_id}.npy",
            "reviewed_file": f"reviewed_{i:02d}-{save_id}.npy",
            "geometry": item.geometry,
            "layer": item.layer,
        }
        arrays[entry["labels_file"]] = labels
        arrays[entry["reviewed_file"]] = np.asarray(item.reviewed, bool)
        if item.marked is not None and np.any(item.marked):
            entry["marked_file"] = f"marked_{i:02d}-{save_id}.npy"
            arrays[entry["marked_file"]] = np.asarray(item.marked, bool)
        if item.image is not None and not (item.source and Path(item.source).exists()):
            entry["image_file"] = f"image_{i:02d}-{save_id}.npy"
            arrays[entry["image_file"]] = np.asarray(item.image)
        entries.append(entry)
    checkpoint = None
    if seg is not None:
        checkpoint = f"model_v{int(seg.version):03d}-{save_id}.safetensors"
    # every file this save may leave behind, new and old: whichever manifest a kill
    # leaves current, the next save deletes the rest of these
    planned = [*arrays, *([checkpoint, _sidecar(checkpoint)] if checkpoint else [])]
    pending = {"format": FORMAT + " pending", "files": sorted({*planned, *old_files})}
    atomic_write_text(folder / PENDING_FILE, json.dumps(pending))

    try:
        files = _write_files(folder, arrays, seg, checkpoint)
        model = None
        if seg is not None:
            model = {"name": model_name, "version": int(seg.version), "checkpoint": checkpoint}
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "images": entries,
            "model": model,
            "files": sorted(files),
        }
        text = json.dumps(doc, indent=2, default=_json_default)
        atomic_write_text(folder / SESSION_FILE, text)  # the commit
    except BaseException:  # the old manifest is current: drop what this save wrote
        for name in set(planned) - old_files:
            _remove_owned(folder, name)
        _unlink(folder / PENDING_FILE)
        raise
    # committed: from here on the folder reads as the new session
    for name in old_files - set(files):
        _remove_owned(folder, name)
    with contextlib.suppress(OSError):
        (folder / PENDING_FILE).unlink()
    return folder / SESSION_FILE


def _write_files(folder: Path, arrays: dict, seg, checkpoint: str | None) -> list[str]:
    """Write the arrays and the model under their new names; returns the names written."""
    for name, array in arrays.items():
        _save_array(folder / name, array)
    files = list(arrays)
    if seg is not None:
        saved = _save_model(seg, folder / checkpoint)
        if saved.name != checkpoint:
            raise OSError(f"the model was saved as {saved.name}, not {checkpoint}")
        files.append(checkpoint)
        if (folder / _sidecar(checkpoint)).is_file():
            files.append(_sidecar(checkpoint))
    return files


def _new_save_id(folder: Path) -> str:
    while True:
        save_id = secrets.token_hex(4)
        if not any(folder.glob(f"*-{save_id}.*")):
            return save_id


def _sidecar(name: str) -> str:
    """The JSON a checkpoint writer may put beside ``name`` (``x.safetensors`` -> ``x.json``)."""
    return name.removesuffix(".safetensors") + ".json"


def _save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
            np.save(f, array, allow_pickle=False)

    def verify(tmp: str) -> None:
        back = np.load(tmp, mmap_mode="r", allow_pickle=False)  # header + full size
        same = back.shape == array.shape and back.dtype == array.dtype
        del back
        if not same:
            raise OSError(f"{path.name} did not read back as written")

    atomic_write(path, write, verify=verify)


def _save_model(seg, path: Path) -> Path:
    from safetensors import SafetensorError

    try:
        return Path(seg.save(path) or path)
    except SafetensorError as exc:  # e.g. a full disk while writing the weights
        raise OSError(f"cannot save the session's model to {path}: {_one_line(exc)}") from exc


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- which files a session owns ---------------------------------------------------------
def _owned_files(folder: Path) -> set[str]:
    """Files the current ``session.json`` of ``folder`` lists (empty when there is none).

    Raises :class:`SessionError` when a ``session.json`` exists but is not a napari-lightm
    session: it may be someone else's file, so nothing in that folder is replaced.
    """
    path = folder / SESSION_FILE
    if not path.exists():
        return set()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionError(
            f"{path} exists but cannot be read as a napari-lightm session ({_one_line(exc)}); "
            "save into another folder"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionError(
            f"{path} is not a napari-lightm session file; save into another folder"
        )
    if isinstance(doc.get("files"), list):
        names = [n for n in doc["files"] if isinstance(n, str)]
    else:  # format version 1: the files its entries name
        names = []
        for entry in doc.get("images") or []:
            if isinstance(entry, dict):
                names += [
                    entry.get(k)
                    for k in ("labels_file", "reviewed_file", "image_file", "marked_file")
                ]
        model = doc.get("model")
        if isinstance(model, dict) and isinstance(model.get("checkpoint"), str):
            names.append(model["checkpoint"])
            sidecar = _sidecar(model["checkpoint"])
            if _is_checkpoint_sidecar(folder / sidecar):
                names.append(sidecar)
    return {n for n in names if isinstance(n, str) and _OWNED_NAME.match(n)}


def _is_checkpoint_sidecar(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == _CHECKPOINT_SIDECAR_FORMAT


def _remove_unfinished(folder: Path, keep: set[str]) -> None:
    """Delete what a killed save left: temporary copies of the manifest and of the pending
    list, and the files its pending list names (with their temporary files) that the
    current manifest does not own."""
    for name in (SESSION_FILE, PENDING_FILE):
        _remove_temps(folder, name)
    pending = folder / PENDING_FILE
    if not pending.is_file():
        return
    try:
        doc = json.loads(pending.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(doc, dict) or doc.get("format") != FORMAT + " pending":
        return
    files = doc.get("files")
    for name in files if isinstance(files, list) else []:
        if isinstance(name, str) and _OWNED_NAME.match(name) and name not in keep:
            _remove_owned(folder, name)


def _remove_owned(folder: Path, name: str) -> None:
    """Delete ``folder/name`` and the temporary files an atomic write of it leaves."""
    if _OWNED_NAME.match(name) and name != SESSION_FILE:
        _unlink(folder / name)
        _remove_temps(folder, name)


def _remove_temps(folder: Path, name: str) -> None:
    """Delete the temporary files a killed atomic write of ``folder/name`` left."""
    for path in folder.glob(f".{glob.escape(name)}.*{TMP_SUFFIX}"):
        _unlink(path)


def _unlink(path: Path) -> None:
    if path.is_file() and not path.is_symlink():
        with contextlib.suppress(OSError):  # leftovers only: the session is complete
            path.unlink()


# --- reading ----------------------------------------------------------------------------
def read_session(folder: str | Path) -> tuple[list[SessionImage], SessionModel | None]:
    """Read a session folder written by :func:`write_session`.

    Raises :class:`SessionError` (one line) for anything unusable: no or bad
    ``session.json``, missing, truncated or tampered arrays, entries naming files outside
    the folder, labels and flags that do not fit together. Nothing is unpickled.
    """
    folder = Path(folder)
    path = folder / SESSION_FILE
    if not path.is_file():
        raise SessionError(f"{folder} is not a napari-lightm session (no {SESSION_FILE})")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"cannot read {path}: {_one_line(exc)}") from exc
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SessionError(f"{path} is not a napari-lightm session file")
    version = doc.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SessionError(
            f"{path} has session format {version!r}; this napari-lightm reads up to "
            f"{FORMAT_VERSION} (update the package)"
        )
    entries = doc.get("images", [])
    if not isinstance(entries, list):
        raise SessionError(f"{path}: 'images' must be a list")
    images = [_read_image(folder, entry, i) for i, entry in enumerate(entries)]
    return images, _read_model(folder, doc.get("model"))


def _read_image(folder: Path, entry: Any, index: int) -> SessionImage:
    where = f"session {folder}, image {index}"
    if not isinstance(entry, dict):
        raise SessionError(f"{where}: entry is not an object")
    name = entry.get("name")
    if not isinstance(name, str):
        raise SessionError(f"{where}: 'name' must be a string")
    where = f"session {folder}, image {name!r}"
    source = entry.get("source")
    geometry = entry.get("geometry")
    layer = entry.get("layer") or {}
    if source is not None and not isinstance(source, str):
        raise SessionError(f"{where}: 'source' must be a path string")
    if geometry is not None and not isinstance(geometry, dict):
        raise SessionError(f"{where}: 'geometry' must be an object")
    if not isinstance(layer, dict):
        raise SessionError(f"{where}: 'layer' must be an object")
    layer = _layer_transforms(layer, where)

    labels = _load_array(folder, entry.get("labels_file"), "labels", where, "biu")
    reviewed = _load_array(folder, entry.get("reviewed_file"), "reviewed flags", where, "biu")
    image = None
    if entry.get("image_file") is not None:
        image = _load_array(folder, entry.get("image_file"), "image", where, "biuf")
    if labels.ndim not in (2, 3):
        raise SessionError(f"{where}: labels must be 2D or 3D, got shape {labels.shape}")
    if reviewed.shape != (n_slices(labels.shape),):
        raise SessionError(
            f"{where}: {reviewed.shape} reviewed flags do not fit labels of shape {labels.shape}"
        )
    marked = None
    if entry.get("marked_file") is not None:
        marked = _load_array(folder, entry.get("marked_file"), "marked voxels", where, "biu")
        if marked.shape != labels.shape:
            raise SessionError(
                f"{where}: marked voxels of shape {marked.shape} differ from labels {labels.shape}"
            )
        marked = marked.astype(bool)
    if image is not None and image.shape != labels.shape:
        raise SessionError(
            f"{where}: image shape {image.shape} differs from labels shape {labels.shape}"
        )
    return SessionImage(
        name, labels, reviewed.astype(bool), source, image, geometry, layer, marked
    )


def _layer_transforms(layer: dict, where: str) -> dict[str, list[float]]:
    """Only ``scale`` / ``translate`` (lists of numbers) go on to the viewer."""
    out = {}
    for key in ("scale", "translate"):
        if key not in layer:
            continue
        value = layer[key]
        if not (
            isinstance(value, list)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise SessionError(f"{where}: layer '{key}' must be a list of numbers")
        out[key] = [float(v) for v in value]
    return out


def _member(folder: Path, name: Any, where: str) -> Path:
    """``folder/name`` for a plain file name; anything that could leave the folder is refused."""
    if not isinstance(name, str) or not name:
        raise SessionError(f"{where}: a file name is missing")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
        or Path(name).name != name
    ):
        raise SessionError(f"{where}: file name {name!r} points outside the session folder")
    return folder / name


def _load_array(folder: Path, name: Any, what: str, where: str, kinds: str) -> np.ndarray:
    path = _member(folder, name, where)
    try:
        with open(path, "rb") as f:
            array = np.load(f, allow_pickle=False)
            if not isinstance(array, np.ndarray):  # e.g. an .npz archive under a .npy name
                raise ValueError("not a single .npy array")
    except FileNotFoundError as exc:
        raise SessionError(f"{where}: {what} file {name} is missing") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise SessionError(
            f"{where}: {what} file {name} is unreadable or truncated ({_one_line(exc)})"
        ) from exc
    if array.dtype.kind not in kinds:
        raise SessionError(f"{where}: {what} file {name} holds {array.dtype}, not numbers")
    return array


def _read_model(folder: Path, model: Any) -> SessionModel | None:
    if not model:
        return None
    where = f"session {folder}, model"
    if not isinstance(model, dict):
        raise SessionError(f"{where}: entry is not an object")
    name, version = model.get("name", ""), model.get("version")
    if not isinstance(name, str):
        raise SessionError(f"{where}: 'name' must be a string")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise SessionError(f"{where}: 'version' must be a whole number >= 0")
    checkpoint = _member(folder, model.get("checkpoint"), where)
    if not checkpoint.is_file():
        raise SessionError(f"{where}: checkpoint {checkpoint.name} is missing")
    return SessionModel(name, version, checkpoint)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SESSION_FILE",
    "SessionError",
    "SessionImage",
    "SessionModel",
    "n_slices",
    "read_session",
    "write_session",
]
