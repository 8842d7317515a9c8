"""Shared by every benchmark: time a call, print a table and record it as data.

:func:`record` prints a Markdown table and appends one JSON object per call (title, slug,
date, machine, commit, command, headers, rows, notes, quick) as a line to
``benchmarks/results/<slug>.jsonl``. That folder is ignored by git: results are data, and
``docs/benchmarks.md`` holds the current table of each benchmark, copied from the newest
record of code that is on main (``python benchmarks/_results.py SLUG`` prints it as
Markdown). ``LIGHTM_RESULTS_DIR`` puts the files in another folder (on the GPU machine:
somewhere under ``$OUT``, to bring them back); the older ``LIGHTM_RESULTS`` (a file path)
still works and names the file's folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DIR_VAR = "LIGHTM_RESULTS_DIR"
OLD_FILE_VAR = "LIGHTM_RESULTS"  # earlier name: a Markdown file; its folder is used


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
        return "unknown"


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
    """A Markdown table (floats to 4 significant digits; ``None`` as an empty cell)."""
    def fmt(v):
        if v is None:
            return ""
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


def slug(title: str) -> str:
    """The file name of a benchmark's records: ``"GPU: parity (max |diff|)"`` ->
    ``"gpu-parity-max-diff"``."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "untitled"


def results_dir() -> Path:
    """Where records go: ``LIGHTM_RESULTS_DIR``, else the folder of ``LIGHTM_RESULTS``,
    else ``benchmarks/results``."""
    if os.environ.get(DIR_VAR):
        return Path(os.environ[DIR_VAR])
    if os.environ.get(OLD_FILE_VAR):
        old = Path(os.environ[OLD_FILE_VAR])
        return old.parent if old.suffix else old
    return RESULTS_DIR


def _json_value(v):
    """A cell as JSON: numpy / torch scalars as numbers, NaN and infinities as null."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (TypeError, ValueError):
            return str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (bool, int, str)):
        return v
    return str(v)


def _script() -> str:
    """The running script, relative to the repository when inside it."""
    script = Path(sys.argv[0] or "-").resolve()
    try:
        return str(script.relative_to(REPO))
    except ValueError:
        return script.name


def stamp_line(rec: dict) -> str:
    """``date · machine · commit X`` as the page and the printed tables show it."""
    return f"{rec['date'][:16].replace('T', ' ')} · {rec['machine']} · commit {rec['commit']}"


def markdown(rec: dict) -> str:
    """A record as a Markdown section: title, stamp line, table, notes."""
    title = rec["title"] + (" (quick)" if rec.get("quick") else "")
    text = f"## {title}\n\n{stamp_line(rec)}\n\n{table(rec['headers'], rec['rows'])}\n"
    return text + (f"\n{rec['notes']}\n" if rec.get("notes") else "")


def record(title: str, headers: list[str], rows: list[list], notes: str = "",
           path: Path | None = None, quick: bool = False) -> str:
    """Print the table and append it as one JSON line to ``<results dir>/<slug>.jsonl``
    (or to ``path``); return the printed Markdown.

    ``quick`` marks a smoke run: recorded with ``"quick": true``, never a page's table.
    The line goes out in one ``write`` to a file opened for appending, so runs that record
    at the same time (two GPUs of one machine) never interleave or drop lines.
    """
    rec = {
        "title": title,
        "slug": slug(title),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "commit": commit(),
        "command": shlex.join(["python", _script(), *sys.argv[1:]]),
        "headers": [str(h) for h in headers],
        "rows": [[_json_value(v) for v in row] for row in rows],
        "notes": notes,
        "quick": bool(quick),
    }
    text = "\n" + markdown(rec)
    print(text)
    target = Path(path) if path is not None else results_dir() / f"{rec['slug']}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n").encode()
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return text


def load(slug_or_path: str | Path, folder: Path | None = None) -> list[dict]:
    """Every record of one benchmark, oldest first."""
    path = Path(slug_or_path)
    if path.suffix != ".jsonl":
        path = (folder or results_dir()) / f"{slug_or_path}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """List the recorded benchmarks, or print the newest full-run record of each slug given
    as Markdown, ready for docs/benchmarks.md."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("slugs", nargs="*", help="benchmarks to print (default: list them all)")
    p.add_argument("--dir", type=Path, help=f"records folder (default: {DIR_VAR} or "
                   "benchmarks/results)")
    p.add_argument("--commit", help="the newest record of this commit (prefix) instead")
    args = p.parse_args(argv)
    folder = args.dir or results_dir()
    if not args.slugs:
        for f in sorted(folder.glob("*.jsonl")):
            recs = load(f)
            print(f"{f.stem}: {len(recs)} records, newest {stamp_line(recs[-1])}")
        return 0
    for name in args.slugs:
        recs = [r for r in load(name, folder) if not r.get("quick")]
        if args.commit:
            recs = [r for r in recs if r["commit"].startswith(args.commit)]
        if not recs:
            print(f"{name}: no full-run record", file=sys.stderr)
            return 1
        rec = recs[-1]
        print(markdown(rec) + f"\nCommand: `{rec['command']}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
