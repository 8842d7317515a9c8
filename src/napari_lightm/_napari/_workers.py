"""Run one long core generator at a time in a napari worker, with progress and Cancel.

The core's ``iter_*`` generators yield :class:`~napari_lightm.engine.callbacks.Progress`
and *return* their result. :class:`JobRunner` wraps one in
``napari.qt.threading.create_worker``; every callback here (progress, result, error)
runs on the main thread through Qt signals, so nothing touches layers from the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QProgressBar

from napari_lightm.engine.callbacks import Cancelled, CancelToken, Progress


class JobRunner(QObject):
    """Owns the single running job of the widget.

    Signals:
        busy_changed(bool): a job started (True) or ended (False).
        progressed(object): a :class:`Progress` from the running job (main thread).
    """

    busy_changed = Signal(bool)
    progressed = Signal(object)

    def __init__(self, bar: QProgressBar | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.bar = bar
        self.worker = None
        self.token: CancelToken | None = None
        self.name = ""
        self.last_status = ""  # "finished", "cancelled" or "error: ..." of the last job
        self._pbar = None
        self.started_at = 0.0

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        name: str,
        make_gen: Callable[[CancelToken], Generator[Progress, None, Any]],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ):
        """Start ``make_gen(token)`` in a thread; ``on_result(value)`` gets its return value.

        Raises :class:`RuntimeError` when another job is running (the widget disables
        its buttons meanwhile, so this only guards against key presses).
        """
        from napari.qt.threading import create_worker

        if self.busy:
            raise RuntimeError(f"'{self.name}' is still running")
        self.token = token = CancelToken()
        self.name = name
        self.last_status = "running"
        self.started_at = time.perf_counter()

        def _run():
            # the generator function runs in the worker thread; `return` becomes `returned`
            return (yield from make_gen(token))

        worker = create_worker(_run)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda value: self._finish("finished", on_result, value))
        worker.errored.connect(lambda exc: self._on_error(exc, on_error))
        worker.aborted.connect(lambda: self._finish("cancelled"))
        self.worker = worker
        self._set_bar(0, 0, f"{name}…")
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next tile / step; its result is dropped."""
        if self.token is not None:
            self.token.cancel()
        if self.worker is not None:
            self.worker.quit()

    # --- main-thread slots ---------------------------------------------------------
    def _on_progress(self, p: Progress) -> None:
        if not isinstance(p, Progress) or self.worker is None:
            return  # a report queued before the job ended
        self.progressed.emit(p)  # first: the panels' state must not hang on the bars
        self._set_bar(p.done, p.total, f"{self.name}: {p.stage} {p.done}/{p.total}")
        self._napari_progress(p)

    def _on_error(self, exc: BaseException, on_error) -> None:
        if isinstance(exc, Cancelled):
            self._finish("cancelled")
            return
        self._finish(f"error: {exc}")
        if on_error is not None:
            on_error(exc)
        else:
            from napari.utils.notifications import show_error

            show_error(f"{self.name} failed: {exc}")

    def _finish(self, status: str, on_result=None, value=None) -> None:
        if self.worker is None:  # errored and aborted can both arrive
            return
        self.worker = None
        self.token = None
        self.last_status = status
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_bar(1 if status == "finished" else 0, 1, f"{self.name}: {status}")
        try:
            if on_result is not None and status == "finished":
                on_result(value)
        finally:
            self.busy_changed.emit(False)

    def _set_bar(self, done: int, total: int, text: str) -> None:
        if self.bar is None:
            return
        self.bar.setMaximum(max(total, 0))
        self.bar.setValue(min(done, total) if total else 0)
        self.bar.setFormat(text)

    def _napari_progress(self, p: Progress) -> None:
        """Mirror progress in napari's activity dock."""
        from napari.utils import progress

        pbar = self._pbar
        if pbar is None or pbar.total != max(p.total, 1):
            if pbar is not None:
                pbar.close()
            pbar = self._pbar = progress(total=max(p.total, 1), desc=f"LightM {self.name}")
        pbar.n = min(p.done, p.total)
        desc = f"LightM {self.name} ({p.stage})"
        if p.loss is not None:
            desc += f" loss {p.loss:.3f}"
        pbar.set_description(desc)  # refreshes the napari activity bar
