"""Helpers for the identity tests: a fixed captioner and a detector that reports every face."""

from __future__ import annotations

import numpy as np
from PIL import Image

from studio.dataset.faces import Face
from studio.identity.engine import distance, get_engine


class FixedCaptioner:
    """Captions every crop "a photo" (the tests here are about faces, not captions)."""

    name, source = "fixed", None

    def caption(self, images, batch_size=4, progress=None):
        if progress:
            progress(len(images), len(images))
        return ["a photo"] * len(images)


class EveryFaceDetector:
    """A face detector that finds every face (as RetinaFace does in a two-person photo); the
    offline Haar detector misses Grace Hopper next to the astronaut."""

    name = "every-face"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return [Face(box=e.box, score=e.score) for e in get_engine().embed(rgb)]


def one_vector(im: Image.Image) -> np.ndarray:
    faces = get_engine().embed(np.asarray(im.convert("RGB")))
    assert len(faces) == 1, [f.box for f in faces]
    return faces[0].vector


def crop_distance(path, ref: np.ndarray) -> float:
    """Distance from the face in a saved crop to ``ref`` (the crop's largest face)."""
    with Image.open(path) as im:
        faces = get_engine().embed(np.asarray(im.convert("RGB")))
    assert faces, f"no face in {path}"
    return distance(faces[0].vector, ref)
