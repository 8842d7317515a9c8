"""Checkpoints and training states: safetensors files with their JSON inside, written atomically.

One checkpoint is one ``.safetensors`` file; its safetensors header metadata holds the
JSON under the key ``"lightm"``, so the file alone is the whole truth (no sidecar file
that could disagree with it after a crash). A checkpoint *directory* holds
``model.safetensors`` (or, after training, ``best`` / ``last``).

Metadata keys: ``format``, ``checkpoint_version``, ``package_version``, ``architecture``
(``name``, ``config`` name and the constructor arguments), ``class_names``, ``modality``,
``preprocessing``, ``patch_size``, ``spacing``, ``version`` (model version, +1 per
fine-tune), ``history`` (one entry per training / fine-tuning run).

A training state (optimizer moments, step, RNG states, losses; what ``resume``
continues from) is the same kind of file: tensors in the safetensors body, everything
else as JSON under the header key ``"lightm_train_state"``. Nothing is ever unpickled.

Writes go to a temporary file in the target folder, then ``os.replace`` (atomic on
POSIX and Windows): a reader never sees half a file, and a cancelled, crashed or killed
run leaves the previous file as it was. Temporary files a killed save left behind
(``.<name>.*.tmp``) are hidden from loading and removed by the next successful save of
the same target. On reading, tensors must be finite and the JSON a well-formed object;
anything else is a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from napari_lightm.io.atomic import TMP_SUFFIX, atomic_write

FORMAT = "napari-lightm checkpoint"
CHECKPOINT_VERSION = 1
META_KEY = "lightm"
DIR_NAMES = ("model.safetensors", "best.safetensors", "last.safetensors")

TRAIN_STATE_FORMAT = "napari-lightm training state"
TRAIN_STATE_VERSION = 1
TRAIN_STATE_KEY = "lightm_train_state"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or made for other data."""


def checkpoint_file(path: str | os.PathLike, *, for_writing: bool = False) -> Path:
    """The ``.safetensors`` file a path names (a file, or a checkpoint directory)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path
    if path.suffix == ".json" and path.with_suffix(".safetensors").exists():
        return path.with_suffix(".safetensors")
    if for_writing:
        return path / DIR_NAMES[0]
    if path.is_dir():
        for name in DIR_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"no checkpoint in folder {path} (looked for {', '.join(DIR_NAMES)})")
    raise CheckpointError(f"checkpoint not found: {path}")


# --- writing ------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike, state_dict: dict[str, Any], metadata: dict[str, Any]
) -> Path:
    """Write weights + metadata atomically; returns the ``.safetensors`` path.

    ``path``: a ``.safetensors`` file, or a directory (-> ``model.safetensors`` in it).
    Tensors are saved as they are (dtype and values bit for bit). A ``<stem>.json``
    that an older version wrote beside the file (a copy of the metadata) is removed,
    since it would describe the previous weights.
    """
    target = checkpoint_file(path, for_writing=True)
    meta = {"format": FORMAT, "checkpoint_version": CHECKPOINT_VERSION, **metadata}
    _write_tensors(target, state_dict, META_KEY, meta)
    _remove_old_sidecar(target)
    return target


def save_train_state(
    path: str | os.PathLike, tensors: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Write a training state atomically: ``tensors`` in the body, ``info`` (JSON-able,
    no NaN) in the header. Returns ``path``."""
    target = Path(path)
    meta = {"format": TRAIN_STATE_FORMAT, "version": TRAIN_STATE_VERSION, **info}
    _write_tensors(target, tensors, TRAIN_STATE_KEY, meta)
    return target


def _write_tensors(target: Path, tensors: dict[str, Any], key: str, meta: dict) -> None:
    from safetensors import safe_open
    from safetensors.torch import save

    text = json.dumps(_no_nan(meta), indent=1, default=_json_default, allow_nan=False)
    body = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # serialised in memory and written here: safetensors' own save_file goes through a
    # hidden temporary of its own that a killed process would leave behind
    data = save(body, metadata={key: text})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    def verify(tmp: str) -> None:  # the whole file reads back (a full disk shows here)
        if os.path.getsize(tmp) != len(data):
            raise OSError(f"{target}: short write ({os.path.getsize(tmp)} of {len(data)} bytes)")
        with safe_open(tmp, framework="pt", device="cpu") as f:
            if (f.metadata() or {}).get(key) != text or len(list(f.keys())) != len(body):
                raise OSError(f"{target}: the written file does not read back")

    atomic_write(target, write, verify=verify)
    remove_stale_temporaries(target)


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.*.tmp`` files an interrupted save of ``target`` left behind.

    Called after a successful save of ``target`` (so saving one file concurrently from
    two processes is not supported: the later one wins anyway). Returns what was removed.
    """
    target = Path(target)
    removed = []
    for tmp in target.parent.glob(f".{_glob_escape(target.name)}.*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _remove_old_sidecar(target: Path) -> None:
    sidecar = target.with_suffix(".json")
    try:
        old = json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError):
        return  # none, or not ours
    if isinstance(old, dict) and old.get("format") == FORMAT:
        with contextlib.suppress(OSError):
            sidecar.unlink()


# --- reading ------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Read ``(state_dict, metadata, file)``; raises :class:`CheckpointError` when unusable
    (missing, truncated, not ours, from a newer version, metadata that is not a JSON
    object, non-finite weights)."""
    file = checkpoint_file(path)
    state, meta = _read_ours(
        file, "checkpoint", META_KEY, FORMAT, "checkpoint_version", CHECKPOINT_VERSION,
        foreign=f"{file} is a safetensors file but not a napari-lightm checkpoint",
    )
    check_finite(state, file)
    return state, meta, file


def load_train_state(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a training state written by :func:`save_train_state`: ``(tensors, info)``.

    Raises :class:`CheckpointError` for a missing, truncated, foreign or newer file.
    """
    file = Path(path)
    return _read_ours(
        file, "training state", TRAIN_STATE_KEY, TRAIN_STATE_FORMAT, "version",
        TRAIN_STATE_VERSION, foreign=f"{file} is not a napari-lightm training state",
    )


def _read_ours(
    file: Path, what: str, key: str, fmt: str, version_field: str, version: int, foreign: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors and JSON header object ``key`` of one of our safetensors files: refuses a
    missing or damaged file, one without ``key`` (``foreign``), another format or a newer
    ``version_field``."""
    header, tensors = _read_tensors(file, what)
    if key not in header:
        raise CheckpointError(foreign)
    info = _parse_object(header[key], file, what)
    if info.get("format") != fmt:
        raise CheckpointError(f"{file} is not a napari-lightm {what}")
    _check_version(info.get(version_field), version, file, what)
    return tensors, info


def _read_tensors(file: Path, what: str) -> tuple[dict[str, str], dict[str, Any]]:
    from safetensors import safe_open

    if not file.is_file():
        raise CheckpointError(f"{what} not found: {file}")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"corrupt or unreadable {what} {file}: {reason}") from err
    return header, tensors


def _parse_object(text: str, file: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"corrupt metadata in {what} {file}: {err}") from err
    if not isinstance(value, dict):
        raise CheckpointError(
            f"corrupt metadata in {what} {file}: a JSON object was expected, "
            f"got {type(value).__name__}"
        )
    return value


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` on one line, cut to ``limit`` characters (tampered values may be huge)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_version(version: Any, current: int, file: Path, what: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{file}: {what} version {short_repr(version)} is not a positive integer"
        )
    if version > current:
        raise CheckpointError(
            f"{file} was written by a newer napari-lightm ({what} version "
            f"{version} > {current}); update the package"
        )


def check_finite(tensors: dict[str, Any], file: Any = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the first floating tensor with NaN or inf."""
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{file}: weight {name!r} holds NaN or infinite values")


def _no_nan(value: Any) -> Any:
    """JSON has no NaN or infinity: nested non-finite floats -> None (e.g. a validation
    Dice before the first validation)."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write",
    "check_finite",
    "checkpoint_file",
    "load_checkpoint",
    "load_train_state",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_train_state",
    "short_repr",
]
