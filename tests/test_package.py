"""Foundation: packaging, entry points, manifest, and the core/Qt boundary."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest

import napari_lightm

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "napari_lightm"
CORE = ["model", "io", "engine", "cli", "__init__.py", "_triton_guard.py"]
GUI_MODULES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy")


def test_version_has_one_source():
    assert version("napari-lightm") == napari_lightm.__version__


def test_console_scripts_and_manifest_entry_points():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["lightm"] == "napari_lightm.cli:main"
    assert scripts["napari-lightm"] == "napari_lightm._napari._launcher:main"
    manifests = {ep.name: ep.value for ep in entry_points(group="napari.manifest")}
    assert manifests["napari-lightm"] == "napari_lightm:napari.yaml"


def test_manifest_reachable_at_repository_top():
    top = REPO / "napari.yaml"
    assert top.read_text() == (SRC / "napari.yaml").read_text()


def test_npe2_validates_the_manifest():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_distribution("napari-lightm")
    assert pm.name == "napari-lightm"
    assert any(w.display_name == "LightM-UNet" for w in pm.contributions.widgets)
    # every command points to an importable module-level callable
    pm.validate_imports()


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_lightm_command_answers(flag):
    out = subprocess.run(
        [sys.executable, "-m", "napari_lightm.cli", flag], capture_output=True, text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    if flag == "--version":
        assert out.stdout.strip() == f"lightm {napari_lightm.__version__}"
    else:
        assert "usage: lightm" in out.stdout


def test_launcher_parses_sample_choice():
    from napari_lightm._napari._launcher import build_parser

    args = build_parser().parse_args(["--sample", "ct"])
    assert args.sample == "ct"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--sample", "mri-of-a-cat"])


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_napari_or_qt():
    files = []
    for entry in CORE:
        p = SRC / entry
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    offenders = {
        str(f.relative_to(SRC)): sorted(_imports(f) & set(GUI_MODULES)) for f in files
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_importing_the_package_stays_light():
    code = (
        "import sys, napari_lightm, napari_lightm.cli;"
        "heavy = [m for m in ('torch', 'napari', 'SimpleITK', 'numba') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
