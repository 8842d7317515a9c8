"""Shared fixtures: the data folder (skips when absent), GPU/napari availability, and a
temporary plugin home for every test (nothing is written under the real home folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels can only run in Triton's interpreter; it must be chosen
# before the first `import triton` of the session (torch imports it lazily, e.g. with the
# first optimizer), so the Triton scan's CPU tests run in the full suite too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LIGHTM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def lightm_home(tmp_path_factory, monkeypatch) -> Path:
    """The plugin's home (``NAPARI_LIGHTM_HOME``) and model folder (``NAPARI_LIGHTM_MODELS``)
    in a temporary folder, for every test: the widget, autosaves and the model store
    would otherwise write ``~/.napari-lightm``. Tests may point them elsewhere."""
    home = tmp_path_factory.mktemp("lightm-home")
    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(home))
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(home / "models"))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; the test skips (with a reason) when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def jsrt(shared_data: Path):
    """The JSRT arrays (``image``, ``lung``, ``heart``, ``ids``), read at run time."""
    import numpy as np

    path = shared_data / "jsrt" / "jsrt_256.npz"
    if not path.is_file():
        pytest.skip(f"JSRT data not found at {path}")
    return dict(np.load(path))


@pytest.fixture(scope="module")
def interpreted_module(request):
    """A private copy of the Triton kernel module at the test module's ``INTERPRETED_SOURCE``
    (a path below the repository root), its kernels running in Triton's interpreter.

    A package folder is copied whole: its ``__init__`` and every module in it, which import
    each other relatively (the copy's ``.name`` attributes).

    Skips with CUDA present (the switch is process-wide; tests marked gpu check the compiled
    kernels there) and when triton was imported earlier without ``TRITON_INTERPRET=1``.
    """
    import importlib
    import importlib.util
    import sys

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the gpu-marked tests check the compiled kernels")
    mp = pytest.MonkeyPatch()
    # read when triton.language and the module's kernels are decorated, so before the
    # first `import triton` of this session
    mp.setenv("TRITON_INTERPRET", "1")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.standard.sum, InterpretedFunction):
        mp.undo()
        pytest.skip("triton was imported earlier in this session without TRITON_INTERPRET=1; "
                    "run this file on its own")
    source = REPO / request.module.INTERPRETED_SOURCE
    name = "_interpreted_" + source.stem
    if source.is_dir():
        spec = importlib.util.spec_from_file_location(
            name, source / "__init__.py", submodule_search_locations=[str(source)])
    else:
        spec = importlib.util.spec_from_file_location(name, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # relative imports inside the copy resolve through it
    spec.loader.exec_module(module)
    if source.is_dir():
        for path in sorted(source.glob("*.py")):
            if path.stem != "__init__":
                importlib.import_module(f"{name}.{path.stem}")
    yield module
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    mp.undo()


def ct_widget(make_viewer, segmenter, shape, tmp_path: Path, monkeypatch):
    """A viewer with a CT phantom of ``shape`` and the docked widget holding ``segmenter``
    (its home and model store under ``tmp_path``); returns (viewer, widget, image layer)."""
    from napari_lightm.io.phantoms import ct_phantom

    monkeypatch.setenv("NAPARI_LIGHTM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NAPARI_LIGHTM_MODELS", str(tmp_path / "models"))
    image, _, geometry = ct_phantom(seed=0, shape=shape)
    viewer = make_viewer(show=False)
    viewer.add_image(image, name="ct", **geometry.layer_kwargs())
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget.model.set_segmenter(segmenter, name="tiny")
    return viewer, widget, widget.current_image()


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """Messages the widget shows with ``show_error`` (collected, not displayed)."""
    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    return shown


@pytest.fixture
def small_widget(make_napari_viewer_proxy):
    """The docked widget over a 4 x 32 x 32 image "ct", with a new 2D background/liver
    model (8 filters, 32^2 patches)."""
    import numpy as np

    viewer = make_napari_viewer_proxy(show=False)
    image = np.linspace(0, 1, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    viewer.add_image(image, name="ct")
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    widget.model.new_model(2, ["background", "liver"], init_filters=8, patch_size=(32, 32))
    return widget


def pytest_collection_modifyitems(config, items):
    if any("gui" in item.keywords for item in items):
        # the model (and Triton with it, importable here for the kernel tests) loads
        # before any test makes a viewer: Triton loaded after napari's OpenGL canvas
        # crashes the process under Xvfb, whichever subset of tests runs
        import napari_lightm.model  # noqa: F401
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
