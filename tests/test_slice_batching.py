"""A 2D model over a volume predicts several slices per forward pass, same labels."""

from __future__ import annotations

import numpy as np
import torch

from napari_lightm.engine import Segmenter
from napari_lightm.engine.inference import default_tile_batch
from napari_lightm.io.phantoms import ct_phantom


def test_slices_are_batched_by_default_on_every_device():
    cpu = torch.device("cpu")
    assert default_tile_batch(cpu, 130, (256, 256)) > 1
    assert default_tile_batch(cpu, 3, (64, 64)) == 3  # never more than the slices
    assert default_tile_batch(cpu, 1, (256, 256)) == 1  # one plane: tiles one by one
    assert default_tile_batch(torch.device("cuda"), 130, (256, 256)) > 1


def test_batched_slices_give_the_labels_of_one_slice_at_a_time():
    image, _, geometry = ct_phantom(seed=0, shape=(8, 32, 32), spacing=(2.5, 4.0, 4.0))
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "liver", "spine"], "CT", init_filters=8,
                        patch_size=(32, 32), device="cpu")
    calls = []
    seg.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batched = seg.predict_proba(image, geometry)
    assert max(calls) > 1  # several slices per forward
    calls.clear()
    single = seg.predict_proba(image, geometry, tile_batch=1)
    assert max(calls) == 1
    np.testing.assert_allclose(batched, single, atol=1e-4)  # float rounding
    np.testing.assert_array_equal(seg.predict(image, geometry),
                                  seg.predict(image, geometry, tile_batch=1))
