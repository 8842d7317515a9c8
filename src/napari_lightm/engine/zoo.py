"""Pretrained models that ship inside the package, found by name.

Each model is one checkpoint in ``napari_lightm/zoo/<name>.safetensors`` (weights and
metadata, written by a script under ``benchmarks/``) with its model card
``<name>.md`` beside it: the training data and its terms, the recipe, the metrics,
the intended use and the limits. The front ends accept a model *name* wherever they
accept a checkpoint path (``lightm predict --model cxr-lungs``, the widget's
"Pretrained" group); :func:`resolve_model` tells the two apart.

Shipped files are read only: fine-tuning a pretrained model makes a new user model in
the user's model folder (:mod:`napari_lightm.engine.store`), never a change here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_lightm.engine.checkpoint import CheckpointError

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"


@dataclass(frozen=True)
class PretrainedModel:
    """A shipped model: its name, files and what its metadata says it segments."""

    name: str
    path: Path
    card: Path | None
    class_names: tuple[str, ...]
    modality: str
    spatial_dims: int
    spacing: tuple[float, ...] | None

    def describe(self) -> str:
        """One line for people: name, dimensions, modality, classes."""
        classes = ", ".join(self.class_names[1:])
        return f"{self.name}: {self.spatial_dims}D {self.modality} model of {classes}"

    def card_text(self) -> str:
        return self.card.read_text() if self.card is not None else ""


def _header(path: Path) -> dict[str, Any]:
    """The napari-lightm metadata of a checkpoint, read from its header only (no weights)."""
    from safetensors import safe_open

    from napari_lightm.engine.checkpoint import META_KEY

    with safe_open(str(path), framework="pt", device="cpu") as f:
        header = f.metadata() or {}
    meta = json.loads(header[META_KEY])
    if not isinstance(meta, dict):
        raise ValueError("metadata is not an object")
    return meta


def pretrained_models(folder: str | os.PathLike | None = None) -> list[PretrainedModel]:
    """The shipped models, sorted by name (files that are not usable checkpoints are skipped)."""
    folder = Path(folder) if folder is not None else ZOO_DIR
    out = []
    for path in sorted(folder.glob("*.safetensors")):
        try:
            meta = _header(path)
            arch = meta["architecture"]
            spacing = meta.get("spacing")
            card = path.with_suffix(".md")
            out.append(
                PretrainedModel(
                    name=path.stem,
                    path=path,
                    card=card if card.is_file() else None,
                    class_names=tuple(str(n) for n in meta["class_names"]),
                    modality=str(meta.get("modality", "")),
                    spatial_dims=int(arch["spatial_dims"]),
                    spacing=None if spacing is None else tuple(float(s) for s in spacing),
                )
            )
        except Exception:  # a broken file in the package folder: not offered
            continue
    return out


def find_pretrained(name: str, folder: str | os.PathLike | None = None) -> PretrainedModel | None:
    """The shipped model called ``name`` (case-insensitive), or None."""
    wanted = str(name).strip().lower()
    return next((m for m in pretrained_models(folder) if m.name.lower() == wanted), None)


def resolve_model(spec: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """The checkpoint a user means by ``spec``: an existing file or folder, else a shipped
    model's name. Raises :class:`CheckpointError` naming both options when it is neither."""
    path = Path(spec)
    if path.exists():
        return path
    model = find_pretrained(str(spec), folder)
    if model is not None:
        return model.path
    names = ", ".join(m.name for m in pretrained_models(folder)) or "none installed"
    raise CheckpointError(
        f"no checkpoint file or folder {str(spec)!r} and no pretrained model of that name "
        f"(pretrained: {names}; `lightm models` lists them)"
    )


def is_shipped(path: str | os.PathLike) -> bool:
    """True for a path inside the package's model folder (never written to)."""
    try:
        Path(path).resolve().relative_to(ZOO_DIR.resolve())
    except ValueError:
        return False
    return True


def load_model(spec: str | os.PathLike, device: Any = "auto", **expect: Any):
    """:meth:`Segmenter.load` of :func:`resolve_model` (``spec``: a path or a shipped name)."""
    from napari_lightm.engine.segmenter import Segmenter

    return Segmenter.load(resolve_model(spec), device=device, **expect)


__all__ = [
    "ZOO_DIR",
    "PretrainedModel",
    "find_pretrained",
    "is_shipped",
    "load_model",
    "pretrained_models",
    "resolve_model",
]
