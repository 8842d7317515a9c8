"""Atomic file writes: the old file survives any failure, a reader never sees half a file.

Every writer of the package (labels, checkpoints, sessions, training state) goes through
:func:`atomic_write`: write to a temporary file in the target's folder (same file
system), let the caller check it, flush it to disk (``fsync``), rename it over the
target (``os.replace``, atomic on POSIX and Windows), then flush the folder entry. A
full disk, a read-only folder, a crash or a kill at any point leaves either the old
file or the new one, never a mix; the temporary file is removed on failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or folder's) data and metadata to disk; folders where supported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if Path(path).is_dir():  # some platforms cannot open folders: nothing to flush
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A new, empty temporary file beside ``path``: hidden, named ``.NAME.XXXX.tmp`` plus
    ``suffix`` (for libraries that pick the file format from the name).

    Created like any new file (mode 0o666 less the umask), not private as
    :func:`tempfile.mkstemp` would make it, since it becomes the target.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")


def keep_mode(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp`` the permission bits of the file it replaces (when there is one and
    the file system keeps permissions)."""
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], None],
    *,
    verify: Callable[[str], None] | None = None,
    suffix: str = "",
) -> Path:
    """Create or replace ``path`` atomically with what ``write(tmp_path)`` writes.

    Args:
        path: the target file; its folder is created when missing.
        write: writes the whole content to the temporary path it is given.
        verify: optional check of the written temporary file (read it back); raise to
            refuse it. Libraries that report no error on a full disk are caught here.
        suffix: ending of the temporary file's name (``".nii.gz"``), for writers that
            choose the format from it.

    Returns:
        ``path``.

    Raises:
        whatever ``write`` or ``verify`` raise, and OSError from the disk (full, read-only,
        permissions); the old file at ``path`` is then untouched and no temporary remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, suffix)
    try:
        write(str(tmp))
        if verify is not None:
            verify(str(tmp))
        keep_mode(tmp, path)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``; the written size is checked."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()

    def verify(tmp: str) -> None:
        if os.path.getsize(tmp) != len(data):
            raise OSError(f"short write: {os.path.getsize(tmp)} of {len(data)} bytes")

    return atomic_write(path, write, verify=verify)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_path",
    "keep_mode",
    "temp_path",
]
