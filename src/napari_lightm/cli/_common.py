"""What every ``lightm`` sub-command shares: argument types, progress bars, file lists and
the output checks that keep a command from overwriting its input."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CLIError(ValueError):
    """Bad command-line input (one-line message)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default after its help, unless it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and default not in (None, False, argparse.SUPPRESS)
            and action.option_strings
        ):
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            text += f" (default: {shown})"
        return text


# --- progress bars ------------------------------------------------------------------------


def progress_bar(enabled: bool = True) -> Callable[[Any], None]:
    """A progress callback drawing one tqdm bar per stage (stderr); no-op when disabled."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def callback(p: Any) -> None:
        if not enabled:
            return
        if p.stage == "validate":
            tqdm.write(f"step {p.done}: {p.message}", file=sys.stderr)
            return
        bar = bars.get(p.stage)
        if bar is None or (p.total and bar.total != p.total) or p.done < bar.n:
            if bar is not None:
                bar.close()
            bar = bars[p.stage] = tqdm(
                total=p.total or None,
                desc=p.stage,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        bar.update(p.done - bar.n)
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}")
        if p.total and p.done >= p.total:
            bar.close()
            del bars[p.stage]

    return callback


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def ints(text: str) -> tuple[int, ...]:
    """Positive sizes like ``64,128,128`` or ``256x256``."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers like 64,128,128, got {text!r}"
        ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 64,128,128, got {text!r}")
    return values


def _number(kind: type, low: float, text: str, what: str, high: float | None = None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (value >= low and (high is None or value < high)):  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, 1, text, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _number(int, 0, text, "an integer >= 0")


def class_count(text: str) -> int:
    return _number(int, 2, text, "at least 2 classes (background and one structure)")


def filters(text: str) -> int:
    value = _number(int, 8, text, "a multiple of 8 (8, 16, 32, ...)", 1025)
    if value % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 (8, 16, 32, ...), got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _number(float, 1e-300, text, "a positive number", float("inf"))


def overlap_fraction(text: str) -> float:
    return _number(float, 0.0, text, "a fraction in [0, 1)", 1.0)


# --- output safety --------------------------------------------------------------------------


def _key(path: Path) -> str:
    """Comparable form of a path: absolute, links resolved, case folded (a refusal on a
    case-sensitive disk costs less than an overwrite on a case-insensitive one)."""
    return os.path.normcase(str(path.resolve())).casefold()


def same_file(a: Path, b: Path) -> bool:
    if _key(a) == _key(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


class _FileSet:
    """Files to protect, found by path (resolved, case folded) or by identity (hard links)."""

    def __init__(self, paths: list[Path]):
        self.by_key = {_key(p): p for p in paths}
        self.by_inode = {}
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self.by_inode[(st.st_dev, st.st_ino)] = p

    def find(self, path: Path) -> Path | None:
        hit = self.by_key.get(_key(path))
        if hit is None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            hit = self.by_inode.get((st.st_dev, st.st_ino))
        return hit


def _data_files(path: Path) -> list[Path]:
    """The detached data file a header names (MetaImage ``ElementDataFile``, NRRD
    ``data file``), which a write of that header's name would replace too."""
    from napari_lightm.io.readers import suffix_of

    suffix = suffix_of(path)
    if suffix not in (".mhd", ".nhdr") or not path.is_file():
        return []
    key = "elementdatafile" if suffix == ".mhd" else "data file"
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("latin-1")
    except OSError:
        return []
    out = []
    for line in head.splitlines():
        name, sep, value = line.partition("=" if suffix == ".mhd" else ":")
        value = value.strip()
        if sep and name.strip().lower() == key and value and value.upper() not in ("LOCAL",
                                                                                    "LIST"):
            out.append(path.parent / value.split()[0])
    return out


def _written_files(out: Path) -> list[Path]:
    """Files a labels write to ``out`` creates: MetaImage ``.mhd`` adds ``.raw`` / ``.zraw``."""
    from napari_lightm.io.readers import suffix_of

    if suffix_of(out) == ".mhd":
        return [out, out.with_suffix(".raw"), out.with_suffix(".zraw")]
    return [out]


def check_outputs(jobs: list[tuple[Path, Path]], inputs: list[Path]) -> None:
    """Refuse (before any work) outputs that are an input (same path, link or hard link,
    or an input's data file), that two inputs share, or that cannot be labels files."""
    from napari_lightm.io import LABEL_SUFFIXES
    from napari_lightm.io.readers import suffix_of

    protected = _FileSet([*inputs, *(d for p in inputs for d in _data_files(p))])
    seen: dict[str, Path] = {}
    for src, out in jobs:
        if suffix_of(out) not in LABEL_SUFFIXES:
            raise CLIError(
                f"cannot write labels to {out}: use a file ending in "
                f"{', '.join(LABEL_SUFFIXES)} or an existing folder"
            )
        if out.is_dir():
            raise CLIError(f"output {out} is a folder; name a file or use --suffix")
        for written in _written_files(out):
            hit = protected.find(written)
            if hit is not None:
                raise CLIError(
                    f"{written} would overwrite the input {hit}; write the labels elsewhere "
                    "or pick another --suffix"
                )
            key = _key(written)
            if key in seen and seen[key] != src:
                raise CLIError(
                    f"{seen[key].name} and {src.name} would both be written to {written}; "
                    "use separate folders or another --suffix"
                )
            seen[key] = src


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot take new files (read-only, full, not a folder), checked
    on the folder itself or, when it does not exist yet, on its nearest existing parent."""
    import tempfile

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"cannot write into {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".lightm-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise CLIError(f"cannot write into {probe}: {err.strerror or err}") from None


# --- files and folders ---------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    from napari_lightm.io import IMAGE_SUFFIXES

    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.is_file()
        and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)
    )


def folder(path: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"folder not found: {p}")
    return p
