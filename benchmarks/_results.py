"""Shared by every benchmark: time a call, print a table and append it to
benchmarks/RESULTS.md with the date, the machine and the commit."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """One line naming the machine: CPU cores (and model), or the GPU's name."""
    parts = [f"{platform.system()} {platform.machine()}", f"{os.cpu_count()} cores"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        else:
            parts.append(f"{torch.get_num_threads()} torch threads")
    except ImportError:
        pass
    return ", ".join(parts)


def commit() -> str:
    """``LIGHTM_COMMIT`` when set (a copy of the tree whose git metadata is not the source's,
    as on the GPU machine), else git's short HEAD (+dirty)."""
    if os.environ.get("LIGHTM_COMMIT"):
        return os.environ["LIGHTM_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except Exception:
        return os.environ.get("LIGHTM_COMMIT", "unknown")


def timed(fn, repeats: int, warm_up: bool = True) -> tuple[float, float]:
    """Best wall time of ``repeats`` calls and the process CPU time of that call, in seconds.

    CPU time (all threads) is the steadier number on a machine shared with other work.
    """
    if warm_up:  # compilation, caches, thread pools
        fn()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_note() -> str:
    """The load average, for notes of CPU benchmarks run on shared cores."""
    load = os.getloadavg()
    return (
        f"load average at the end {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} "
        "(other work shares these cores)"
    )


def record(title: str, headers: list[str], rows: list[list], notes: str = "",
           path: Path | None = None, quick: bool = False) -> str:
    """Print the table and append a dated section to RESULTS.md; return the text.

    ``quick`` (a smoke run) prints the table but keeps it out of RESULTS.md.
    """
    if quick:
        title += " (quick)"
        path = Path(tempfile.gettempdir()) / "lightm_quick_results.md"
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (
        f"\n## {title}\n\n{stamp} · {machine()} · commit {commit()}\n\n"
        f"{table(headers, rows)}\n" + (f"\n{notes}\n" if notes else "")
    )
    print(text)
    target = path or Path(os.environ.get("LIGHTM_RESULTS", RESULTS))
    if not target.exists():
        target.write_text("# Benchmark results\n\nAppended by the scripts in benchmarks/.\n")
    with open(target, "a") as f:
        f.write(text)
    return text
