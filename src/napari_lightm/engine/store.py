"""The local model store: user checkpoints as numbered versions in one folder (no Qt).

The folder is ``NAPARI_LIGHTM_MODELS``, else ``<home>/models`` with ``<home>`` =
``NAPARI_LIGHTM_HOME`` or ``~/.napari-lightm``. A version is one file
``<name>_v<NNN>.safetensors``; the widget saves one per fine-tuning run and can roll back
to any of them, and the CLI can read and write the same folder.

Version numbers come from the folder, not from memory: a new version of ``name`` gets the
next number after the highest one on disk, so a run started from a rolled-back version
never replaces a later one, and no save ever replaces an existing file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from pathlib import Path

from napari_lightm.io.atomic import fsync_path

SUFFIX = ".safetensors"
_VERSION_RE = re.compile(r"^(?P<name>.+)_v(?P<version>\d+)$")
_BAD_NAME_CHARS = set('/\\:*?"<>|\x00')


def lightm_home() -> Path:
    """Root of the plugin's local files (``NAPARI_LIGHTM_HOME`` or ``~/.napari-lightm``)."""
    home = os.environ.get("NAPARI_LIGHTM_HOME")
    return Path(home) if home else Path.home() / ".napari-lightm"


def models_dir(create: bool = True) -> Path:
    """The local model folder (``NAPARI_LIGHTM_MODELS`` overrides it).

    ``create``: make the folder when missing (writers); listing never needs to.
    """
    override = os.environ.get("NAPARI_LIGHTM_MODELS")
    path = Path(override) if override else lightm_home() / "models"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def user_models(folder: Path | None = None) -> list[Path]:
    """Checkpoints the user saved (``.safetensors`` files or checkpoint folders), newest first.

    Hidden files (temporaries of a save in progress) are left out; a missing folder is empty.
    """
    folder = models_dir(create=False) if folder is None else Path(folder)
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.suffix == SUFFIX)
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def recent_models(folder: Path | None = None, limit: int = 20) -> list[Path]:
    """The models to offer under "Open recent", newest first (today: the user's models)."""
    return user_models(folder)[:limit]


def split_version(path: str | os.PathLike) -> tuple[str, int | None]:
    """``liver_v003.safetensors`` -> ``("liver", 3)``; no version -> ``(stem, None)``."""
    stem = Path(path).name.removesuffix(SUFFIX)
    match = _VERSION_RE.match(stem)
    if match:
        return match["name"], int(match["version"])
    return stem, None


def check_name(name: str) -> str:
    """``name`` if it can be a model file name's stem; ValueError naming the problem if not."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a model name must not be empty")
    if name in (".", "..") or name.startswith(".") or _BAD_NAME_CHARS & set(name):
        raise ValueError(
            f"model name {name!r} cannot be a file name (no leading dot, no / \\ : * ? \" < > |)"
        )
    return name


def version_path(name: str, version: int, folder: Path | None = None) -> Path:
    """Where version ``version`` of ``name`` lives: ``<folder>/<name>_v<NNN>.safetensors``."""
    folder = models_dir(create=False) if folder is None else Path(folder)
    return folder / f"{check_name(name)}_v{int(version):03d}{SUFFIX}"


def versions(name: str, folder: Path | None = None) -> dict[int, Path]:
    """The versions of ``name`` on disk: ``{version: path}`` (files and checkpoint folders)."""
    folder = models_dir(create=False) if folder is None else Path(folder)
    if not folder.is_dir():
        return {}
    out = {}
    for path in folder.iterdir():
        if path.name.startswith(".") or not (path.is_dir() or path.suffix == SUFFIX):
            continue
        stem, version = split_version(path)
        if stem == name and version is not None:
            out[version] = path
    return dict(sorted(out.items()))


def next_version(name: str, folder: Path | None = None, at_least: int = 0) -> int:
    """The number a new version of ``name`` gets: past every version on disk, >= ``at_least``."""
    taken = versions(name, folder)
    return max(int(at_least), max(taken, default=-1) + 1)


def save_version(seg, name: str, folder: Path | None = None, parent: Path | None = None) -> Path:
    """Save ``seg`` (a Segmenter) as a new version of ``name``; returns the file.

    The number is :func:`next_version` (at least ``seg.version``) and becomes
    ``seg.version``. When ``parent`` (the checkpoint this model was fine-tuned from) is
    given, the run's history entry records it (``parent_file``, ``parent_version``) with
    the file it was saved as. An existing file is never replaced: the weights go to a
    hidden temporary file that is then linked under the free name.

    Raises:
        ValueError: ``name`` cannot be a file name.
        OSError: the folder cannot be written (read-only, full, not a folder);
            ``seg`` is left as it was.
    """
    from safetensors import SafetensorError

    check_name(name)
    folder = models_dir() if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    old_version = seg.version
    old_history = [dict(h) for h in seg.history]
    try:
        for _attempt in range(100):
            version = next_version(name, folder, at_least=old_version)
            target = version_path(name, version, folder)
            seg.version = version
            seg.history = _with_lineage(old_history, target, version, parent)
            if _save_new(seg, target):
                return target
        raise FileExistsError(f"no free version name for {name!r} in {folder}")
    except SafetensorError as exc:  # e.g. a full disk while writing the weights
        seg.version, seg.history = old_version, old_history
        raise OSError(f"cannot save model {name!r} into {folder}: {exc}") from exc
    except BaseException:
        seg.version, seg.history = old_version, old_history
        raise


def _with_lineage(history: list[dict], target: Path, version: int, parent: Path | None):
    history = [dict(h) for h in history]
    if history and isinstance(history[-1], dict) and "saved_as" not in history[-1]:
        entry = history[-1]  # the run that made these weights
        entry["saved_as"] = target.name
        entry["version"] = version
        if parent is not None:
            entry["parent_file"] = Path(parent).name
            parent_version = split_version(parent)[1]
            if parent_version is None:
                parent_version = entry.get("from_version")
            entry["parent_version"] = parent_version
    return history


def _save_new(seg, target: Path) -> bool:
    """Write ``seg`` to ``target`` unless that exists (False then); never replaces a file."""
    token = secrets.token_hex(4)
    tmp = target.with_name(f".{target.name.removesuffix(SUFFIX)}.{token}{SUFFIX}")
    saved = Path(seg.save(tmp) or tmp)
    sidecar = saved.with_suffix(".json")  # a checkpoint writer's optional JSON copy
    try:
        if not _link_new(saved, target):
            return False
        if sidecar.is_file():
            _link_new(sidecar, target.with_suffix(".json"))
        fsync_path(target.parent)
        return True
    finally:
        for path in (saved, sidecar):
            with contextlib.suppress(OSError):
                path.unlink()


def _link_new(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` only if no file has it (atomic where links work)."""
    try:
        os.link(src, dst)
        return True
    except FileExistsError:
        return False
    except OSError as exc:  # a file system without hard links: check, then rename
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    if dst.exists():
        return False
    os.replace(src, dst)
    return True


__all__ = [
    "check_name",
    "lightm_home",
    "models_dir",
    "next_version",
    "recent_models",
    "save_version",
    "split_version",
    "user_models",
    "version_path",
    "versions",
]
