"""Checkpoint saves killed at random moments (``kill -9``): the file on disk is always a
whole old or a whole new checkpoint, and the leftovers of a killed save are cleaned up."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import torch

from napari_lightm.engine import Segmenter
from napari_lightm.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

ROUNDS = 25  # kills at least; more until one landed inside a save
MAX_ROUNDS = 400


def two_checkpoints() -> list[tuple[dict, dict]]:
    """Two (weights, metadata) pairs of one tiny model: version v has every weight = v."""
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "lung"], "XR", init_filters=8, patch_size=(32, 32),
                        device="cpu")
    pairs = []
    for v in (1, 2):
        state = {k: torch.full_like(t, float(v)) for k, t in seg.model.state_dict().items()}
        meta = seg.metadata()
        meta["version"] = v
        pairs.append((state, meta))
    return pairs


def save_forever(target, pairs, first: int) -> None:
    """Child process: save the two checkpoints in turn (``pairs[first]`` first) until
    killed; starting with the version not on disk makes every completed save visible."""
    try:
        i = first
        while True:
            save_checkpoint(target, *pairs[i % 2])
            i += 1
    finally:
        os._exit(0)


@pytest.mark.slow
def test_a_save_killed_at_any_moment_leaves_the_old_or_the_new_checkpoint(tmp_path):
    pairs = two_checkpoints()
    target = tmp_path / "model.safetensors"
    save_checkpoint(target, *pairs[0])
    t0 = time.perf_counter()
    save_checkpoint(target, *pairs[0])
    save_seconds = time.perf_counter() - t0  # kills land over the first ~2 saves of a child
    rng = random.Random(0)
    versions, leftovers, on_disk = set(), 0, 1
    rounds = 0
    while rounds < ROUNDS or (leftovers == 0 and rounds < MAX_ROUNDS):
        rounds += 1
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            save_forever(target, pairs, first=on_disk % 2)  # pairs[v % 2] is version 3 - v
        time.sleep(rng.uniform(0.0, 3.0 * save_seconds))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers += len(list(tmp_path.glob(".model.safetensors.*.tmp")))
        state, meta, _ = load_checkpoint(tmp_path)  # the folder: the stale .tmp is ignored
        weights = torch.cat([t.reshape(-1) for t in state.values()])
        assert meta["version"] in (1, 2) and bool((weights == meta["version"]).all()), (
            f"checkpoint version {meta['version']} with weights {weights.unique()[:4]}"
        )
        versions.add(meta["version"])
        on_disk = meta["version"]
    assert versions == {1, 2}, "no child completed a save: the test tested nothing"
    assert leftovers > 0, f"no kill of {rounds} landed inside a save: the test tested nothing"
    assert not list(tmp_path.glob("*.json"))  # no sidecar that could disagree
    save_checkpoint(target, *pairs[1])  # a successful save removes the killed saves' files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert Segmenter.load(tmp_path, device="cpu").version == 2
