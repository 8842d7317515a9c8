"""The shipped cxr-lungs model on real films it is given as a user would: 8-bit PNGs of a
JSRT fold 2 case at 2048^2 and at 256^2, no spacing in either. Reads ../shared/data at
run time (skips when absent)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def films(jsrt, tmp_path_factory):
    from PIL import Image
    from scipy import ndimage

    idx = next(i for i, n in enumerate(jsrt["ids"]) if int(str(n)[-3:]) % 2 == 0)  # fold 2
    image, lung = jsrt["image"][idx], jsrt["lung"][idx]
    folder = tmp_path_factory.mktemp("films")
    big = ndimage.zoom(image.astype(np.float32), 8, order=1, grid_mode=True, mode="nearest")
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(folder / "big.png")
    Image.fromarray(image).save(folder / "small.png")
    return folder, lung


def test_lightm_predict_by_name_on_a_2048_png_and_the_same_film_at_256(films, capsys):
    from napari_lightm.cli import main
    from napari_lightm.engine.metrics import dice_iou
    from napari_lightm.io import read_image

    folder, lung = films
    for name in ("big", "small"):
        argv = ["predict", "--model", "cxr-lungs", str(folder / f"{name}.png"),
                str(folder / f"{name}_labels.png"), "--device", "cpu", "-q"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "estimated 0.175 mm" in out and "estimated 1.4 mm" in out  # said, not silent
    labels_big = read_image(folder / "big_labels.png")[0]
    labels_small = read_image(folder / "small_labels.png")[0]
    truth = np.kron(lung, np.ones((8, 8), np.uint8))
    for k in (1, 2):  # right and left lung, on their sides
        assert dice_iou(labels_big, truth, k)[0] >= 0.95
    disagree = np.mean(labels_big[4::8, 4::8] != labels_small)
    assert disagree < 0.01
