"""Eye alignment and square 1024 px crops around a detected face.

:func:`crop_face` turns a detection into a square crop: rotate so the eyes are level, take a
square whose size and position depend on the framing, keep it inside the photo (shift, then
shrink; mirror-pad only when nothing else fits), resize to 1024 px with Lanczos. A crop taken
from fewer than 1024 source pixels is flagged as upscaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from studio.dataset import DatasetError
from studio.dataset.faces import Face

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

# ArcFace's 5-point template (eyes, nose, mouth corners) in a 112x112 face square.
_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                          [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


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
              out: int = CROP_SIZE, face: Face | None = None) -> CropResult:
    """Crop ``face`` (default: the largest) with the framing; no face -> the whole photo
    squared."""
    if framing not in FRAMING_CHOICES:
        raise DatasetError(f"Unknown framing {framing!r}; use one of {', '.join(FRAMING_CHOICES)}.")
    warnings: list[str] = []
    chosen = face is not None
    if face is None:
        # The largest face; among Haar detections, one whose eyes were found is more credible.
        credible = [f for f in faces if f.left_eye is not None] or faces
        face = max(credible, key=lambda f: f.size) if credible else None
    if len(faces) > 1 and not chosen:
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
