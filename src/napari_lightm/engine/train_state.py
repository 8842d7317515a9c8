"""The training state ``lightm train --resume`` continues from, without pickle.

:func:`train_state` gathers weights, optimizer moments, RNG states and the loss history
as tensors plus JSON-able information, which
:func:`~napari_lightm.engine.checkpoint.save_train_state` writes as one safetensors file
(``train_state.safetensors``); :func:`resume_state` finds it in a run folder (refusing an
old pickled ``train_state.pt``) and :func:`restore_train_state` puts it back, checking
that it belongs to this run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from napari_lightm.engine.checkpoint import (
    CheckpointError,
    check_finite,
    load_train_state,
    short_repr,
)
from napari_lightm.engine.preprocessing import Preprocessing

if TYPE_CHECKING:
    from napari_lightm.engine.data import PatchSampler
    from napari_lightm.engine.segmenter import Segmenter

STATE_FILE = "train_state.safetensors"
OLD_STATE_FILE = "train_state.pt"  # pickle format of earlier versions: never loaded
RUN_FILES = ("best.safetensors", "last.safetensors", STATE_FILE, OLD_STATE_FILE)


@dataclass
class TrainResult:
    """What :func:`~napari_lightm.engine.training.iter_train` returns."""

    segmenter: Segmenter
    steps: int
    losses: list[float] = field(default_factory=list)
    val_dice: list[tuple[int, float]] = field(default_factory=list)
    best_dice: float = float("nan")
    best_path: Path | None = None
    last_path: Path | None = None


def train_state(
    step: int,
    names: Sequence[str],
    dims: int,
    seg: Segmenter,
    opt: torch.optim.Optimizer,
    sampler: PatchSampler,
    gen: torch.Generator,
    result: TrainResult,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything ``resume`` needs, as ``(tensors, JSON-able info)`` for
    :func:`~napari_lightm.engine.checkpoint.save_train_state`.

    Tensors: ``model.<key>`` (weights), ``optimizer.<param index>.<name>`` (moments,
    step counts), ``torch_rng`` (the augmentation generator), ``losses`` and
    ``val_dice`` (float64, NaN kept). Info: step, class names, dims, preprocessing,
    the sampler's numpy RNG state, the optimizer's parameter groups and non-tensor state.
    """
    opt_state = opt.state_dict()
    tensors = {f"model.{k}": v for k, v in seg.model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt_state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["torch_rng"] = gen.get_state()
    tensors["losses"] = torch.tensor(result.losses, dtype=torch.float64)
    tensors["val_dice"] = torch.tensor(result.val_dice, dtype=torch.float64).reshape(-1, 2)
    tensors["best_dice"] = torch.tensor(result.best_dice, dtype=torch.float64)
    info = {
        "step": int(step),
        "class_names": list(names),
        "spatial_dims": int(dims),
        "preprocessing": seg.preprocessing.to_dict(),
        "numpy_rng": [sampler.rng.bit_generator.state],
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
    }
    return tensors, info


def run_files(out_dir: Path) -> list[str]:
    """The files of a training run (:data:`RUN_FILES`) that ``out_dir`` holds."""
    return [n for n in RUN_FILES if (Path(out_dir) / n).is_file()]


def resume_state(out_dir: Path) -> tuple[dict, dict] | None:
    """The training state to resume from ``out_dir``, or None to start a new run there."""
    path = out_dir / STATE_FILE
    if path.is_file():
        return load_train_state(path)
    old = out_dir / OLD_STATE_FILE
    if old.is_file():
        raise CheckpointError(
            f"{old} is a training state of an earlier napari-lightm (pickle format), which is "
            "never loaded because unpickling can run code; start a new run in another folder"
        )
    others = run_files(out_dir)
    if others:
        raise CheckpointError(
            f"{out_dir} holds {', '.join(others)} but no {STATE_FILE} to resume from; "
            "start a new run in another folder"
        )
    return None


def restore_train_state(
    state: tuple[dict[str, torch.Tensor], dict[str, Any]],
    path: Path,
    names: Sequence[str],
    dims: int,
    seg: Segmenter,
    opt: torch.optim.Optimizer,
    sampler: PatchSampler,
    gen: torch.Generator,
    result: TrainResult,
    rank: int = 0,
) -> int:
    """Put a state from :func:`train_state` back (model, optimizer, RNGs, losses);
    returns its step. Raises :class:`CheckpointError` naming ``path`` when the state
    belongs to another run or is malformed."""
    tensors, info = state
    if info.get("class_names") != list(names) or info.get("spatial_dims") != dims:
        raise CheckpointError(
            f"{path} belongs to another run ({short_repr(info.get('spatial_dims'))}D, "
            f"classes {short_repr(info.get('class_names'))})"
        )
    try:
        step = info["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {short_repr(step)} is not a count")
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        check_finite(model_state, path)
        seg.model.load_state_dict(model_state, strict=True)
        opt.load_state_dict(_optimizer_state(tensors, info, opt))
        seg.preprocessing = Preprocessing.from_dict(info["preprocessing"])
        rngs = info["numpy_rng"]
        sampler.rng.bit_generator.state = rngs[rank % len(rngs)]
        gen.set_state(tensors["torch_rng"])
        losses, val = tensors["losses"], tensors["val_dice"]
        if losses.ndim != 1 or val.ndim != 2 or val.shape[1] != 2:
            raise ValueError("losses / val_dice have the wrong shape")
        result.losses = [float(v) for v in losses.tolist()]
        result.val_dice = [(int(s), float(d)) for s, d in val.tolist()]
        result.best_dice = float(tensors["best_dice"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"unusable training state {path}: {reason}") from err
    return step


def _optimizer_state(
    tensors: dict[str, torch.Tensor], info: dict[str, Any], opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """An optimizer ``state_dict`` rebuilt from the flat tensors and JSON info (JSON lists
    back to tuples where the optimizer uses tuples, e.g. ``betas``)."""
    groups = info["optimizer_param_groups"]
    current = opt.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current):
        raise ValueError("the optimizer's parameter groups differ")
    groups = [
        {k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in g.items()}
        for g, cur in zip(groups, current)
    ]
    params = {int(p) for g in groups for p in g["params"]}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            index, name = key[len("optimizer."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entry in info.get("optimizer_scalars", {}).items():
        state.setdefault(int(index), {}).update(entry)
    if not set(state) <= params:
        raise ValueError("the optimizer state names parameters the model does not have")
    flat = [p for g in opt.param_groups for p in g["params"]]
    for index, entry in state.items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim and value.shape != flat[index].shape:
                raise ValueError(
                    f"optimizer {name} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(flat[index].shape)}"
                )
    return {"state": state, "param_groups": groups}


__all__ = [
    "OLD_STATE_FILE",
    "RUN_FILES",
    "STATE_FILE",
    "restore_train_state",
    "resume_state",
    "run_files",
    "train_state",
]
