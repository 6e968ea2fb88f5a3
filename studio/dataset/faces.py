"""Face detection, eye alignment and square 1024 px crops.

Two detectors share the :class:`FaceDetector` interface:

- :class:`RetinaFaceDetector` (facexlib, ResNet-50): boxes + 5 landmarks; its weights
  (``detection_Resnet50_Final.pth``, ~109 MB) are downloaded on first use into
  :func:`facexlib_dir` (``STUDIO_FACEXLIB_DIR``, default ``STUDIO_HOME/models/facexlib``). When
  the file is missing and the machine is offline (``HF_HUB_OFFLINE``/``STUDIO_OFFLINE`` set, or
  GitHub unreachable) it fails at once with one sentence instead of hanging in a download.
- :class:`HaarDetector` (OpenCV Haar cascades, shipped inside opencv 4.x): works with no download;
  eye centres from the eye cascade give the rotation, or no rotation when the eyes are not found.

``get_detector("auto")`` prefers RetinaFace and falls back to Haar with a notice.

:func:`crop_face` turns a detection into a square crop: rotate so the eyes are level, take a
square whose size and position depend on the framing, keep it inside the photo (shift, then
shrink; mirror-pad only when nothing else fits), resize to 1024 px with Lanczos. A crop taken
from fewer than 1024 source pixels is flagged as upscaled.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageFilter

from studio.dataset import DatasetError

log = logging.getLogger(__name__)

CROP_SIZE = 1024
TINY_FACE_PX = 80
"""A face narrower than this (source pixels) is too small to learn an identity from."""

# Framing: crop side and vertical offset of the crop centre below the face centre, both in units
# of the face size (about forehead to chin).
FRAMINGS: dict[str, tuple[float, float]] = {
    "close-up": (1.9, 0.05),
    "head-and-shoulders": (3.0, 0.45),
    "upper-body": (4.6, 1.2),
}
FULL = "full"
FRAMING_CHOICES = [*FRAMINGS, FULL]
DEFAULT_FRAMING = "head-and-shoulders"
FRAMING_HELP = {
    "close-up": "the face fills most of the frame",
    "head-and-shoulders": "head and shoulders (default; best for identity LoRAs)",
    "upper-body": "head to waist",
    "full": "the whole photo, cropped or padded to a square around the face",
}

RETINAFACE_URL = ("https://github.com/xinntao/facexlib/releases/download/v0.1.0/"
                  "detection_Resnet50_Final.pth")
RETINAFACE_FILE = "detection_Resnet50_Final.pth"
# ArcFace's 5-point template (eyes, nose, mouth corners) in a 112x112 face square.
_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                          [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


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


# ---- alignment and cropping -----------------------------------------------------------------
@dataclass
class Alignment:
    """Face geometry in the source: centre, size (about forehead to chin), roll angle (rad)."""

    center: np.ndarray
    size: float
    angle: float
    method: str


def align(face: Face) -> Alignment:
    """5-point similarity transform when landmarks exist, else eye centres, else the box."""
    if face.landmarks is not None and len(face.landmarks) == 5:
        import cv2

        m, _ = cv2.estimateAffinePartial2D(_TEMPLATE_112, np.asarray(face.landmarks, np.float64))
        if m is not None:
            s = math.hypot(m[0, 0], m[1, 0])
            angle = math.atan2(m[1, 0], m[0, 0])
            centre = m @ np.array([56.0, 56.0, 1.0])
            if abs(angle) < math.radians(60) and s > 0:
                return Alignment(centre, 112 * s * 0.95, angle, "5-point")
    centre = np.array(face.center, dtype=np.float64)
    angle = 0.0
    method = "box"
    if face.left_eye and face.right_eye:
        dx = face.right_eye[0] - face.left_eye[0]
        dy = face.right_eye[1] - face.left_eye[1]
        a = math.atan2(dy, dx)
        if abs(a) < math.radians(45):
            angle, method = a, "eyes"
    return Alignment(centre, face.size, angle, method)


@dataclass
class CropWindow:
    """A square of side ``side`` (source px) centred at ``center``, rotated by ``angle``."""

    center: np.ndarray
    side: float
    angle: float
    padded: bool = False

    def rot(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]])

    def to_crop(self, pt, out: int = CROP_SIZE) -> tuple[float, float]:
        """Map a source point into the output crop's pixel coordinates."""
        v = self.rot().T @ (np.asarray(pt, np.float64) - self.center) + self.side / 2
        return (float(v[0] * out / self.side), float(v[1] * out / self.side))

    def corners(self) -> np.ndarray:
        h = self.side / 2
        local = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        return self.center + local @ self.rot().T


@dataclass
class CropResult:
    image: Image.Image
    window: CropWindow | None
    face: Face | None
    faces_found: int
    upscaled: bool
    source_side: float
    warnings: list[str] = field(default_factory=list)
    method: str = ""


def _fit(center: np.ndarray, side: float, angle: float, w: int, h: int, face_c: np.ndarray,
         face_half: float) -> CropWindow | None:
    """Move, then shrink, the window until it lies inside the image with the face inside it."""
    win = CropWindow(center.astype(np.float64), float(side), angle)
    min_side = 2.2 * face_half
    for _ in range(200):
        cs = win.corners()
        minx, maxx, miny, maxy = cs[:, 0].min(), cs[:, 0].max(), cs[:, 1].min(), cs[:, 1].max()
        if minx >= -0.5 and miny >= -0.5 and maxx <= w + 0.5 and maxy <= h + 0.5:
            return win
        if (minx < 0 and maxx > w) or (miny < 0 and maxy > h):
            win.side *= 0.97
        else:
            shift = np.array([max(0.0, -minx) - max(0.0, maxx - w),
                              max(0.0, -miny) - max(0.0, maxy - h)])
            win.center = win.center + shift
            rel = win.rot().T @ (face_c - win.center)
            lim = win.side / 2 - face_half
            clamped = np.clip(rel, -lim, lim) if lim > 0 else np.zeros(2)
            if not np.allclose(clamped, rel, atol=0.5):
                win.center = face_c - win.rot() @ clamped
                win.side *= 0.97
        if win.side < min_side:
            return None
    return None


def _render(rgb: Image.Image, win: CropWindow, out: int) -> Image.Image:
    """Cut the window out of the image (rotating at source resolution), resize with Lanczos."""
    side = max(1, int(round(win.side)))
    if abs(win.angle) < math.radians(0.3) and not win.padded:
        x0 = int(round(win.center[0] - win.side / 2))
        y0 = int(round(win.center[1] - win.side / 2))
        x0 = min(max(0, x0), max(0, rgb.width - side))
        y0 = min(max(0, y0), max(0, rgb.height - side))
        patch = rgb.crop((x0, y0, x0 + side, y0 + side))
    else:
        import cv2

        c, s = math.cos(win.angle), math.sin(win.angle)
        half = win.side / 2
        # Output pixel (u, v) samples source centre + R @ (u - half, v - half).
        m = np.array([[c, -s, win.center[0] - c * half + s * half],
                      [s, c, win.center[1] - s * half - c * half]])
        arr = cv2.warpAffine(np.asarray(rgb), m, (side, side),
                             flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT_101)
        patch = Image.fromarray(arr)
    return patch.resize((out, out), Image.Resampling.LANCZOS) if patch.size != (out, out) else patch


def square_full(rgb: Image.Image, focus: tuple[float, float] | None = None,
                out: int = CROP_SIZE, max_aspect: float = 1.6) -> tuple[Image.Image, float, bool]:
    """The whole photo as a square: the largest square around ``focus`` (or the centre); a very
    elongated photo is first padded with a blurred copy of itself so at most 1/1.6 of it is lost.
    Returns (image, source side, padded)."""
    w, h = rgb.size
    padded = False
    long, short = max(w, h), min(w, h)
    if long / short > max_aspect:
        cw, ch = (w, math.ceil(w / max_aspect)) if w > h else (math.ceil(h / max_aspect), h)
        canvas = rgb.resize((cw, ch), Image.Resampling.BILINEAR).filter(
            ImageFilter.GaussianBlur(radius=max(8, long // 40)))
        off = ((cw - w) // 2, (ch - h) // 2)
        canvas.paste(rgb, off)
        if focus is not None:
            focus = (focus[0] + off[0], focus[1] + off[1])
        rgb, padded = canvas, True
        w, h = rgb.size
    side = min(w, h)
    fx, fy = focus if focus is not None else (w / 2, h / 2)
    x0 = int(round(min(max(fx - side / 2, 0), w - side)))
    y0 = int(round(min(max(fy - side / 2, 0), h - side)))
    patch = rgb.crop((x0, y0, x0 + side, y0 + side))
    return patch.resize((out, out), Image.Resampling.LANCZOS), float(side), padded


def crop_face(rgb: Image.Image, faces: list[Face], framing: str = DEFAULT_FRAMING,
              out: int = CROP_SIZE) -> CropResult:
    """Crop the largest face with the framing; no face -> the whole photo squared."""
    if framing not in FRAMING_CHOICES:
        raise DatasetError(f"Unknown framing {framing!r}; use one of {', '.join(FRAMING_CHOICES)}.")
    warnings: list[str] = []
    # The largest face; among Haar detections, one whose eyes were found is more credible.
    credible = [f for f in faces if f.left_eye is not None] or faces
    face = max(credible, key=lambda f: f.size) if credible else None
    if len(faces) > 1:
        warnings.append(f"{len(faces)} faces found; the largest was used. Use photos with only "
                        "you in them, or crop the others out.")
    if face is not None and face.size < TINY_FACE_PX:
        warnings.append(f"the face is only {face.size:.0f} px wide; use a closer or sharper photo "
                        f"(at least {TINY_FACE_PX} px, ideally 200+).")
    if face is None or framing == FULL:
        img, side, padded = square_full(rgb, face.center if face else None, out)
        if padded:
            warnings.append("the photo is very elongated and was padded with a blurred copy; "
                            "crop it closer to a square for a cleaner result.")
        res = CropResult(img, None, face, len(faces), side < out, side, warnings,
                         "full" if face else "no face")
    else:
        al = align(face)
        mult, down = FRAMINGS[framing]
        c, s = math.cos(al.angle), math.sin(al.angle)
        # "down" is along the face's own vertical axis (R @ (0, 1)).
        center = al.center + np.array([-s, c]) * down * al.size
        win = _fit(center, mult * al.size, al.angle, rgb.width, rgb.height, al.center,
                   al.size / 2)
        if win is None and al.angle != 0.0:
            win = _fit(center, mult * al.size, 0.0, rgb.width, rgb.height, al.center, al.size / 2)
            if win is not None:
                warnings.append("the head could not be levelled without leaving the photo; "
                                "the crop is not rotated.")
        if win is None:
            win = CropWindow(center, mult * al.size, al.angle, padded=True)
            warnings.append("the face is too close to the photo's edge for this framing; the "
                            "crop was padded by mirroring. Choose a closer framing or another "
                            "photo.")
        img = _render(rgb, win, out)
        res = CropResult(img, win, face, len(faces), win.side < out, win.side, warnings, al.method)
    if res.upscaled:
        res.warnings.append(f"upscaled: the crop comes from {res.source_side:.0f} source px "
                            f"(< {out}); a higher-resolution photo gives sharper training data.")
    return res
