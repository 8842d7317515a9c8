"""Session generations for the session fault tests, and the process their kill test kills.

``python tests/_session_child.py FOLDER START`` prints ``ready`` and then saves generation
START + 1, START + 2, ... into FOLDER until it is killed. Every array and the model of a
generation say which generation wrote them, so a reader can tell a complete session
from a mix of two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_lightm.io.atomic import atomic_write_bytes
from napari_lightm.io.session import SessionImage, write_session


class FakeModel:
    """Stands in for a Segmenter: a version and an atomic ``save`` of known bytes."""

    def __init__(self, generation: int, fail: BaseException | None = None):
        self.version = generation
        self.fail = fail

    def save(self, path):
        if self.fail is not None:
            raise self.fail
        return atomic_write_bytes(path, model_bytes(self.version))


def model_bytes(generation: int) -> bytes:
    return f"weights of generation {generation}\n".encode() * 2000


def images(generation: int, shape=(16, 96, 96)) -> list[SessionImage]:
    """Two images whose every array says which generation wrote it."""
    out = []
    for i in range(2):
        labels = np.full(shape, (generation + i) % 251, np.uint8)
        reviewed = np.zeros(shape[0], bool)
        reviewed[generation % shape[0]] = True
        image = np.full(shape, generation * 10 + i, np.float32)
        out.append(SessionImage(f"img{i}", labels, reviewed, image=image))
    return out


def save_generation(folder: Path, generation: int, **kwargs) -> Path:
    model = FakeModel(generation, **kwargs)
    return write_session(folder, images(generation), model, model_name=f"gen{generation}")


def main(folder: str, start: str) -> None:
    print("ready", flush=True)
    generation = int(start)
    while True:
        generation += 1
        save_generation(Path(folder), generation)


if __name__ == "__main__":
    main(*sys.argv[1:3])
