"""Progress reporting and cancellation shared by every long-running core function.

Core functions take ``progress: ProgressCallback | None`` and
``cancel: CancelToken | None``; they never touch Qt. The napari widget passes a
callback that forwards to a worker's ``yield`` and a token its Cancel button sets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any


class Cancelled(Exception):
    """Raised by :meth:`CancelToken.raise_if_cancelled` once cancellation was asked for."""


class CancelToken:
    """Thread-safe cancel flag checked between tiles / steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


@dataclass
class Progress:
    """One progress report: ``done`` of ``total`` units of ``stage`` (plus optional numbers)."""

    done: int
    total: int
    stage: str = ""
    loss: float | None = None
    message: str = ""


ProgressCallback = Callable[[Progress], None]


def report(progress: ProgressCallback | None, *args, **kwargs) -> None:
    """Call ``progress(Progress(*args, **kwargs))`` when a callback was given."""
    if progress is not None:
        progress(Progress(*args, **kwargs))


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` when ``cancel`` is set."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def drain(gen: Generator[Progress, None, Any], progress: ProgressCallback | None) -> Any:
    """Run a generator to its end, forwarding its Progress to ``progress``; return its value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(item)


__all__ = ["CancelToken", "Cancelled", "Progress", "ProgressCallback", "check", "drain", "report"]
