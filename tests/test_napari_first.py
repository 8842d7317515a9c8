"""napari first, then the model: the order a user meets, in a fresh process.

Triton's LLVM segfaults a process that loaded Mesa's OpenGL first (Xvfb, llvmpipe), and
PyTorch imports Triton lazily (``torch._dynamo``: ``torch.compiler.disable``, the first
optimizer). The rest of the suite imports the model before any viewer exists, so it
cannot see this; here a child process creates the viewer and its canvas FIRST, then
walks every path that builds, loads, runs or trains a model, through the widget.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

SCRIPT = textwrap.dedent(
    """
    import sys
    import time

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)  # Mesa's OpenGL is loaded from here on
    assert "torch" not in sys.modules, "napari alone should not load torch"

    from napari_lightm.io.phantoms import CT_CLASSES, ct_phantom

    image, truth, geometry = ct_phantom(seed=0, shape=(8, 64, 64))
    layer = viewer.add_image(image, name="ct", **geometry.layer_kwargs())
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")

    def wait_idle(limit=240):
        t0 = time.monotonic()
        while widget.runner.busy:
            QApplication.processEvents()
            time.sleep(0.01)
            assert time.monotonic() - t0 < limit, "job did not finish"
        assert widget.runner.last_status == "finished", widget.runner.last_status

    # New model (the widget's button path), then Segment: builds and runs the mixer
    widget.model.new_model(2, list(CT_CLASSES), init_filters=8, patch_size=(64, 64))
    widget.segment_image_button.click()
    wait_idle()
    # mark two slices reviewed from the truth and fine-tune: the first torch optimizer
    labels = widget.labels_layer()
    labels.data = truth.copy()
    flags = labels.metadata["lightm_reviewed"]
    flags[[2, 5]] = True
    widget.finetune.max_steps.setValue(3)
    assert widget.finetune.start()
    wait_idle()
    # save and load again (Load / Open recent take this path)
    path = widget.model.save_version()
    widget.model.load_path(path)
    widget.segment_slice_button.click()
    wait_idle()
    # the core API too
    from napari_lightm.engine import FinetuneSample, Segmenter, finetune

    seg = Segmenter.new(2, ["background", "liver"], device="cpu", init_filters=8,
                        patch_size=(64, 64))
    seg.predict(image[:2], geometry)
    reviewed = np.zeros(truth.shape, bool)
    reviewed[3] = True
    finetune(seg, [FinetuneSample(image, (truth == 1).astype(np.uint8), reviewed, geometry)],
             max_steps=2)
    print("NAPARI-FIRST OK", "triton" in sys.modules and sys.modules["triton"] is not None)
    viewer.close()
    """
)


def test_model_use_after_the_canvas_does_not_crash(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NAPARI_LIGHTM_HOME"] = str(tmp_path / "home")
    env["NAPARI_LIGHTM_MODELS"] = str(tmp_path / "models")
    env.pop("QT_QPA_PLATFORM", None)  # the real canvas under Xvfb, as a user's display
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
        cwd=tmp_path,
    )
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, f"exit {result.returncode} (-11 or 139 = segfault):\n{tail}"
    assert "NAPARI-FIRST OK False" in result.stdout, tail
