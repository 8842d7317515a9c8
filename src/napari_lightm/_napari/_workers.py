"""Run one long core generator at a time in a napari worker, with progress and Cancel.

The core's ``iter_*`` generators yield :class:`~napari_lightm.engine.callbacks.Progress`
and *return* their result. :class:`JobRunner` wraps one in
``napari.qt.threading.create_worker``; every callback here (progress, result, error)
runs on the main thread through Qt signals, so nothing touches layers from the worker.

The viewer may close while a job runs: the runner's slots are its own bound methods
(Qt drops those connections when the runner is deleted), each checks that the Qt
objects it touches still exist, and deleting the runner (or :meth:`JobRunner.shutdown`)
cancels the job so its thread ends at the next tile / step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QProgressBar

from napari_lightm.engine.callbacks import Cancelled, CancelToken, Progress

#: what a job's generator returns when it stopped at its cancel token
_CANCELLED = object()


def _stop_all(jobs: list, *_args) -> None:
    for job in jobs:
        job.stop()


class JobFailed(Exception):
    """A job's ``RuntimeError`` (torch raises those), re-raised as a plain error: the
    worker would take a ``RuntimeError`` for its own deletion and end silently."""


def alive(obj) -> bool:
    """Whether the Qt object behind ``obj`` still exists (False for None)."""
    if obj is None:
        return False
    try:
        obj.objectName()
    except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
        return False
    return True


class _Job:
    """One started job: its cancel token, worker, callbacks and signal connections.

    A plain object, so :meth:`stop` is safe while the Qt objects around it are deleted.
    """

    def __init__(self, name: str, token: CancelToken, on_result, on_error) -> None:
        self.name = name
        self.token = token
        self.worker = None
        self.on_result = on_result
        self.on_error = on_error
        self.connections: list = []  # (signal, slot) pairs, to disconnect on shutdown

    def stop(self, *_args) -> None:
        self.token.cancel()
        if self.worker is not None:
            self.worker.quit()

    def disconnect(self) -> None:
        for signal, slot in self.connections:
            try:
                signal.disconnect(slot)
            except (RuntimeError, TypeError):
                pass
        self.connections = []


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
        self.name = ""
        self.last_status = ""  # "finished", "cancelled" or "error: ..." of the last job
        self._pbar = None
        self.started_at = 0.0
        self._live: list[_Job] = []  # the running job (at most one)
        self._closed = False
        # deleting the runner (the viewer closed) stops the job; a plain callable, so it
        # still runs while the runner's own Qt object goes away
        self.destroyed.connect(partial(_stop_all, self._live))

    @property
    def _job(self) -> _Job | None:
        return self._live[0] if self._live else None

    @property
    def worker(self):
        return None if self._job is None else self._job.worker

    @property
    def token(self) -> CancelToken | None:
        return None if self._job is None else self._job.token

    @property
    def busy(self) -> bool:
        return self._job is not None

    def start(
        self,
        name: str,
        make_gen: Callable[[CancelToken], Generator[Progress, None, Any]],
        on_result: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
    ):
        """Start ``make_gen(token)`` in a thread; ``on_result(value)`` gets its return value.

        Raises :class:`RuntimeError` when another job is running (the widget disables
        its buttons meanwhile, so this only guards against key presses) or after
        :meth:`shutdown`.
        """
        from napari.qt.threading import create_worker

        if self._closed:
            raise RuntimeError("the LightM widget is closed")
        if self.busy:
            raise RuntimeError(f"'{self.name}' is still running")
        job = _Job(name, CancelToken(), on_result, on_error)
        self.name = name
        self.last_status = "running"
        self.started_at = time.perf_counter()

        def _run():
            # the generator function runs in the worker thread; `return` becomes `returned`
            try:
                return (yield from make_gen(job.token))
            except Cancelled:
                return _CANCELLED
            except RuntimeError as exc:
                raise JobFailed(str(exc)) from exc

        # errors reach _on_errored (no re-raise in the event loop, where nobody handles it)
        job.worker = worker = create_worker(_run, _ignore_errors=True)
        for signal, slot in (
            (worker.yielded, self._on_progress),
            (worker.returned, self._on_returned),
            (worker.errored, self._on_errored),
            (worker.aborted, self._on_aborted),
            # the worker's last signal; ends a job that was aborted after its last step,
            # which emits neither `returned` nor `aborted`
            (worker.finished, self._on_aborted),
        ):
            bound = partial(slot, job)
            signal.connect(bound)
            job.connections.append((signal, bound))
        self._live[:] = [job]
        self._set_bar(0, 0, f"{name}…")
        self.busy_changed.emit(True)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next tile / step; its result is dropped."""
        if self._job is not None:
            self._job.stop()

    def shutdown(self) -> None:
        """Cancel the running job and never touch Qt again (the widget is closing)."""
        self._closed = True
        job = self._job
        self._live.clear()
        if job is not None:
            job.stop()
            job.disconnect()
        self._close_pbar()
        self.bar = None

    # --- main-thread slots (each for one job: stale signals of an ended job are ignored)
    def _current(self, job: _Job) -> bool:
        return job is self._job and not self._closed and alive(self)

    def _on_progress(self, job: _Job, p: Progress) -> None:
        if not self._current(job) or not isinstance(p, Progress):
            return  # a report queued before the job ended, or the widget is gone
        self.progressed.emit(p)  # first: the panels' state must not hang on the bars
        self._set_bar(p.done, p.total, f"{self.name}: {p.stage} {p.done}/{p.total}")
        self._napari_progress(p)

    def _on_returned(self, job: _Job, value) -> None:
        if value is _CANCELLED:
            self._finish(job, "cancelled")
        else:
            self._finish(job, "finished", value)

    def _on_aborted(self, job: _Job, *_args) -> None:
        self._finish(job, "cancelled")

    def _on_errored(self, job: _Job, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._finish(job, "cancelled")
            return
        if not self._finish(job, f"error: {exc}"):
            return
        if job.on_error is not None:
            job.on_error(exc)
        else:
            from napari.utils.notifications import show_error

            show_error(f"{job.name} failed: {exc}")

    def _finish(self, job: _Job, status: str, value=None) -> bool:
        """End ``job`` (once: errored and aborted can both arrive); False if it had."""
        if not self._current(job):
            return False
        self._live.clear()
        job.disconnect()
        self.last_status = status
        self._close_pbar()
        self._set_bar(1 if status == "finished" else 0, 1, f"{self.name}: {status}")
        try:
            if status == "finished":
                job.on_result(value)
        finally:
            self.busy_changed.emit(False)
        return True

    def _close_pbar(self) -> None:
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            try:
                pbar.close()
            except RuntimeError:  # napari's activity dock went with the window
                pass

    def _set_bar(self, done: int, total: int, text: str) -> None:
        if not alive(self.bar):
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
