"""benchmarks/_results.py: every benchmark run becomes one JSON line in an ignored folder."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIELDS = {"title", "slug", "date", "machine", "commit", "headers", "rows", "notes", "quick"}


def _no_constants(name):
    raise ValueError(f"not valid JSON: {name}")


def strict_json(line: str) -> dict:
    """json.loads, refusing the NaN / Infinity that Python's json writes by default."""
    return json.loads(line, parse_constant=_no_constants)


@pytest.fixture
def results():
    """benchmarks/_results.py as a module (benchmarks/ is not an installed package)."""
    spec = importlib.util.spec_from_file_location("bench_results",
                                                  REPO / "benchmarks" / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tracked_state() -> tuple[str, list]:
    """git's view of the worktree and the default results folder's files (name, size)."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                            text=True).stdout
    default = REPO / "benchmarks" / "results"
    files = sorted((p.name, p.stat().st_size) for p in default.glob("*"))  # [] when absent
    return status, files


def test_record_appends_one_parsable_line_per_call(results, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "results" / "nested"  # created on demand
    monkeypatch.setenv("LIGHTM_RESULTS_DIR", str(folder))
    monkeypatch.delenv("LIGHTM_RESULTS", raising=False)
    before = tracked_state()

    rows = [["triton vs reference", "Bt=2", 1.58e-07, float("nan")],
            ["numpy scalars", np.float32(0.5), np.int64(3), np.float64("inf")]]
    text = results.record("GPU: parity (max |diff| / max |ref|)",
                          ["check", "shape", "output", "gradients"], rows, notes="acceptance")
    results.record("GPU: parity (max |diff| / max |ref|)", ["check"], [["smoke"]], quick=True)

    path = folder / "gpu-parity-max-diff-max-ref.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (strict_json(line) for line in lines)
    assert FIELDS <= set(first)
    assert first["title"] == "GPU: parity (max |diff| / max |ref|)"
    assert first["slug"] == "gpu-parity-max-diff-max-ref"
    assert first["headers"] == ["check", "shape", "output", "gradients"]
    assert first["rows"] == [["triton vs reference", "Bt=2", 1.58e-07, None],
                             ["numpy scalars", 0.5, 3, None]]
    assert first["notes"] == "acceptance"
    assert first["quick"] is False and second["quick"] is True
    assert first["commit"] and first["machine"]
    assert first["date"][:4].isdigit() and "T" in first["date"]
    # the printed table is Markdown with the same stamp
    assert "| check | shape | output | gradients |" in text
    assert "commit " + first["commit"] in capsys.readouterr().out
    assert tracked_state() == before


def test_older_results_variable_names_a_folder(results, tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHTM_RESULTS_DIR", raising=False)
    monkeypatch.setenv("LIGHTM_RESULTS", str(tmp_path / "RESULTS_gpu.md"))
    monkeypatch.setenv("LIGHTM_COMMIT", "abc1234")
    results.record("Selective scan on CPU", ["a"], [[1.0]])
    (rec,) = results.load("selective-scan-on-cpu", tmp_path)
    assert rec["commit"] == "abc1234" and rec["rows"] == [[1.0]]
    assert not (tmp_path / "RESULTS_gpu.md").exists()


def test_newest_full_run_prints_as_markdown(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LIGHTM_RESULTS_DIR", str(tmp_path))
    for value, quick in ((1.0, False), (2.0, False), (3.0, True)):
        results.record("DDP run", ["x"], [[value]], quick=quick)
    capsys.readouterr()
    assert results.main(["ddp-run"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "| 3 |" not in out and "| 1 |" not in out
