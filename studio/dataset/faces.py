"""Face detection: the :class:`FaceDetector` interface and two detectors.

- :class:`RetinaFaceDetector` (facexlib, ResNet-50): boxes + 5 landmarks; its weights
  (``detection_Resnet50_Final.pth``, ~109 MB) are downloaded on first use into
  :func:`facexlib_dir` (``STUDIO_FACEXLIB_DIR``, default ``STUDIO_HOME/models/facexlib``). When
  the file is missing and the machine is offline (``HF_HUB_OFFLINE``/``STUDIO_OFFLINE`` set, or
  GitHub unreachable) it fails at once with one sentence instead of hanging in a download.
- :class:`HaarDetector` (OpenCV Haar cascades, shipped inside opencv 4.x): works with no download;
  eye centres from the eye cascade give the rotation, or no rotation when the eyes are not found.

``get_detector("auto")`` prefers RetinaFace and falls back to Haar with a notice. Turning a
detection into a crop is :mod:`studio.dataset.crop`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from studio.dataset import DatasetError

log = logging.getLogger(__name__)

RETINAFACE_URL = ("https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
                  "detection_Resnet50_Final.pth")
RETINAFACE_FILE = "detection_Resnet50_Final.pth"


class FaceDetectorError(DatasetError):
    """The requested face detector cannot run; the message is one sentence with the fix."""


@dataclass
class Face:
    """One detected face in source pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float = 1.0
    left_eye: tuple[float, float] | None = None  # the eye with the smaller x in the image
    right_eye: tuple[float, float] | None = None
    landmarks: np.ndarray | None = None  # 5x2: eyes, nose, mouth corners (RetinaFace)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        return max(self.width, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


class FaceDetector(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an HxWx3 uint8 RGB array, largest first."""
        ...


# ---- Haar (offline) -----------------------------------------------------------------------
class HaarDetector:
    """OpenCV Haar cascades (frontal face + eyes); no download needed."""

    name = "haar"

    def __init__(self, detect_side: int = 1024):
        import cv2

        root = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "")
        face_xml, eye_xml = root / "haarcascade_frontalface_default.xml", root / "haarcascade_eye.xml"
        if not hasattr(cv2, "CascadeClassifier") or not face_xml.is_file():
            raise FaceDetectorError("OpenCV's Haar cascades are missing (opencv 5 dropped them); "
                                    "install opencv-python>=4.10,<5.")
        self._cv2 = cv2
        self.face = cv2.CascadeClassifier(str(face_xml))
        self.eye = cv2.CascadeClassifier(str(eye_xml))
        self.detect_side = detect_side

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces, largest first. Frontal cascades miss heads tilted by more than ~10 degrees, so
        when no face with two eyes is found the photo is searched again turned by +-18 degrees.
        Detections without two eyes are dropped when any face with eyes is found (Haar's false
        positives are mostly patches of texture; a second person in sunglasses is not counted),
        and otherwise kept only when at least 0.6 times the largest."""
        grey = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        faces = self._pass(grey, 0.0)
        if not any(f.left_eye for f in faces):
            turned: list[Face] = []
            for angle in (18.0, -18.0):
                for f in self._pass(grey, angle):
                    if f.left_eye is not None and not any(_inside(f.center, t.box) for t in turned):
                        turned.append(f)
            if turned:
                faces = turned + [f for f in faces
                                  if not any(_inside(f.center, t.box) for t in turned)]
        faces.sort(key=lambda f: f.size, reverse=True)
        with_eyes = [f for f in faces if f.left_eye is not None]
        if with_eyes:
            faces = with_eyes
        elif faces:
            faces = [f for f in faces if f.size >= 0.6 * faces[0].size]
        return faces

    def _pass(self, grey_full: np.ndarray, angle: float) -> list[Face]:
        """One detection pass on the photo turned by ``angle`` degrees; source coordinates."""
        cv2 = self._cv2
        inv = None
        img = grey_full
        if angle:
            h, w = grey_full.shape
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            c, s = abs(m[0, 0]), abs(m[0, 1])
            nw, nh = int(w * c + h * s), int(w * s + h * c)
            m[0, 2] += nw / 2 - w / 2
            m[1, 2] += nh / 2 - h / 2
            img = cv2.warpAffine(grey_full, m, (nw, nh), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
            inv = cv2.invertAffineTransform(m)
        h, w = img.shape
        scale = min(1.0, self.detect_side / max(h, w))
        small = cv2.resize(img, (round(w * scale), round(h * scale)),
                           interpolation=cv2.INTER_AREA) if scale < 1 else img
        small = cv2.equalizeHist(small)
        min_px = max(24, int(0.04 * min(small.shape)))
        rects, counts = self.face.detectMultiScale2(small, scaleFactor=1.1, minNeighbors=6,
                                                    minSize=(min_px, min_px))

        def back(pt):
            if inv is None:
                return (float(pt[0]), float(pt[1]))
            v = inv @ np.array([pt[0], pt[1], 1.0])
            return (float(v[0]), float(v[1]))

        faces = []
        for (x, y, fw, fh), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(counts).ravel(),
                                     strict=False):
            box = (x / scale, y / scale, (x + fw) / scale, (y + fh) / scale)
            eyes = self._eyes(img, box)
            cx, cy = back(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
            half = (box[2] - box[0]) / 2
            face = Face(box=(cx - half, cy - half, cx + half, cy + half), score=float(n))
            if eyes:
                a, b = sorted([back(eyes[0]), back(eyes[1])])
                face.left_eye, face.right_eye = a, b
            faces.append(face)
        return faces

    def _eyes(self, grey: np.ndarray, box) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Eye centres inside the upper part of the face box, or None when not found reliably."""
        cv2 = self._cv2
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        fw = x1 - x0
        roi = grey[max(0, y0):max(0, y0 + int(0.62 * (y1 - y0))), max(0, x0):max(0, x1)]
        if roi.size == 0 or fw < 20:
            return None
        k = 240.0 / fw  # work at a fixed face width so the parameters hold at any resolution
        roi = cv2.equalizeHist(cv2.resize(roi, (max(1, round(roi.shape[1] * k)),
                                                max(1, round(roi.shape[0] * k)))))
        eyes = self.eye.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=4,
                                         minSize=(int(240 * 0.12),) * 2,
                                         maxSize=(int(240 * 0.4),) * 2)
        centres = [((ex + ew / 2) / k + x0, (ey + eh / 2) / k + y0)
                   for ex, ey, ew, eh in np.asarray(eyes).reshape(-1, 4)]
        best, best_cost = None, math.inf
        cx = (x0 + x1) / 2
        for i, a in enumerate(centres):
            for b in centres[i + 1:]:
                left, right = (a, b) if a[0] < b[0] else (b, a)
                dist = math.dist(left, right)
                if not (left[0] < cx < right[0] and 0.25 * fw <= dist <= 0.65 * fw):
                    continue
                if abs(right[1] - left[1]) > 0.3 * dist:  # more than ~17 degrees: not a pair
                    continue
                cost = abs(dist - 0.42 * fw) + abs((left[0] + right[0]) / 2 - cx)
                if cost < best_cost:
                    best, best_cost = (left, right), cost
        return best


def _inside(pt: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]


# ---- RetinaFace (facexlib) ------------------------------------------------------------------
def facexlib_dir() -> Path:
    """Where RetinaFace weights live: ``STUDIO_FACEXLIB_DIR`` or ``STUDIO_HOME/models/facexlib``."""
    env = os.environ.get("STUDIO_FACEXLIB_DIR")
    if env:
        return Path(env).expanduser()
    from studio.workspace import default_home

    return default_home() / "models" / "facexlib"


def offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("STUDIO_OFFLINE", "HF_HUB_OFFLINE"))


def _reachable(host: str = "github.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_retinaface_weights(model_dir: Path | None = None, timeout: float = 60.0) -> Path:
    """The RetinaFace weight file, downloaded once (atomically) when missing and online."""
    folder = Path(model_dir) if model_dir else facexlib_dir()
    path = folder / RETINAFACE_FILE
    if path.is_file() and path.stat().st_size > 0:
        return path
    fix = (f"put {RETINAFACE_FILE} into {folder} (or set STUDIO_FACEXLIB_DIR to a folder "
           "holding it), or use the Haar detector")
    if offline():
        raise FaceDetectorError(f"RetinaFace weights are not in {folder} and downloads are off "
                                f"(offline mode); {fix}.")
    if not _reachable():
        raise FaceDetectorError(f"RetinaFace weights are not in {folder} and github.com cannot be "
                                f"reached to download them; {fix}.")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    try:
        log.info("downloading %s to %s", RETINAFACE_URL, path)
        with urllib.request.urlopen(RETINAFACE_URL, timeout=timeout) as resp, open(tmp, "wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FaceDetectorError(f"Downloading the RetinaFace weights failed ({exc}); {fix}.") from exc
    return path


class RetinaFaceDetector:
    """facexlib RetinaFace (ResNet-50) with 5 landmarks per face."""

    name = "retinaface"

    def __init__(self, model_dir: str | Path | None = None, device: str | None = None,
                 detect_side: int = 1280, conf: float = 0.8):
        weights = ensure_retinaface_weights(Path(model_dir) if model_dir else None)
        try:
            from facexlib.detection import init_detection_model

            from studio.models import pick_device

            self.device = device or pick_device()
            # The weight file is already in model_rootpath, so facexlib downloads nothing.
            self.model = init_detection_model("retinaface_resnet50", half=False,
                                              device=self.device,
                                              model_rootpath=str(weights.parent))
        except Exception as exc:
            raise FaceDetectorError(f"RetinaFace could not be loaded ({type(exc).__name__}: "
                                    f"{str(exc)[:120]}); use the Haar detector.") from exc
        self.detect_side, self.conf = detect_side, conf

    def detect(self, rgb: np.ndarray) -> list[Face]:
        import cv2
        import torch

        h, w = rgb.shape[:2]
        scale = min(1.0, self.detect_side / max(h, w))
        small = cv2.resize(rgb, (round(w * scale), round(h * scale)),
                           interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        from studio.models import GPU_LOCK

        with GPU_LOCK, torch.no_grad():
            dets = self.model.detect_faces(bgr, conf_threshold=self.conf)
        faces = []
        for d in np.asarray(dets).reshape(-1, 15):
            pts = d[5:15].reshape(5, 2) / scale
            eyes = sorted([tuple(pts[0]), tuple(pts[1])])
            faces.append(Face(box=tuple(float(v) / scale for v in d[:4]), score=float(d[4]),
                              left_eye=eyes[0], right_eye=eyes[1], landmarks=pts))
        faces.sort(key=lambda f: f.size, reverse=True)
        return faces


DETECTOR_CHOICES = ["auto", "retinaface", "haar"]


def get_detector(kind: str = "auto", model_dir: str | Path | None = None,
                 device: str | None = None) -> tuple[FaceDetector, str | None]:
    """(detector, notice): ``auto`` tries RetinaFace and falls back to Haar with a notice."""
    kind = (kind or "auto").lower()
    if kind not in DETECTOR_CHOICES:
        raise FaceDetectorError(f"Unknown face detector {kind!r}; use auto, retinaface or haar.")
    if kind == "haar":
        return HaarDetector(), None
    try:
        return RetinaFaceDetector(model_dir, device), None
    except FaceDetectorError as exc:
        if kind == "retinaface":
            raise
        notice = (f"Notice: using the OpenCV Haar face detector because RetinaFace is unavailable "
                  f"({str(exc).rstrip('.')}); Haar is less accurate on turned or tilted faces.")
        log.info(notice)
        return HaarDetector(), notice
