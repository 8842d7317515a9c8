"""Checkpoints: safetensors weights with the JSON metadata embedded, written atomically.

One checkpoint is one ``.safetensors`` file; its safetensors header metadata holds the
JSON under the key ``"lightm"`` (so the file alone is complete), and a sidecar
``<stem>.json`` with the same JSON is written next to it for people to read. A
checkpoint *directory* holds ``model.safetensors`` (or, after training, ``best`` /
``last``).

Metadata keys: ``format``, ``checkpoint_version``, ``package_version``, ``architecture``
(``name``, ``config`` name and the constructor arguments), ``class_names``, ``modality``,
``preprocessing``, ``patch_size``, ``spacing``, ``version`` (model version, +1 per
fine-tune), ``history`` (one entry per training / fine-tuning run).

Writes go to a temporary file in the target folder, then ``os.replace`` (atomic on
POSIX and Windows): a reader never sees half a checkpoint, and a cancelled or crashed
run leaves the previous file as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from napari_lightm.io.atomic import atomic_write

FORMAT = "napari-lightm checkpoint"
CHECKPOINT_VERSION = 1
META_KEY = "lightm"
DIR_NAMES = ("model.safetensors", "best.safetensors", "last.safetensors")


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


def save_checkpoint(
    path: str | os.PathLike, state_dict: dict[str, Any], metadata: dict[str, Any]
) -> Path:
    """Write weights + metadata atomically; returns the ``.safetensors`` path.

    ``path``: a ``.safetensors`` file, or a directory (-> ``model.safetensors`` in it).
    Tensors are saved as they are (dtype and values bit for bit).
    """
    from safetensors.torch import save_file

    target = checkpoint_file(path, for_writing=True)
    meta = {"format": FORMAT, "checkpoint_version": CHECKPOINT_VERSION, **metadata}
    text = json.dumps(meta, indent=1, default=_json_default)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: text}))
    atomic_write(target.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    return target


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Read ``(state_dict, metadata, file)``; raises :class:`CheckpointError` when unusable."""
    from safetensors import safe_open

    file = checkpoint_file(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"corrupt or unreadable checkpoint {file}: {err}") from err
    if META_KEY not in header:
        raise CheckpointError(f"{file} is a safetensors file but not a napari-lightm checkpoint")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt metadata in checkpoint {file}: {err}") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a napari-lightm checkpoint")
    if int(meta.get("checkpoint_version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{file} was written by a newer napari-lightm (checkpoint version "
            f"{meta['checkpoint_version']} > {CHECKPOINT_VERSION}); update the package"
        )
    return state, meta, file


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
    "checkpoint_file",
    "load_checkpoint",
    "save_checkpoint",
]
