"""Quality report: per-image measurements with warnings that say what to do, and set checks.

Per image: source resolution, sharpness (variance of the Laplacian of the crop scaled to
512x512 grey, so the score does not depend on resolution), face count, face size relative to
the photo and to the crop, exposure (mean luminance, share of clipped pixels), upscaling,
duplicate-of. For the set: the count against the recommended 10-20 photos and the variety of
framing in the source photos (close-ups vs. medium vs. wide shots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RECOMMENDED = (10, 20)
MIN_USEFUL = 5
BLUR_MIN = 60.0
DARK_MEAN, BRIGHT_MEAN = 50.0, 210.0
CLIP_MAX = 0.08


def sharpness(im: Image.Image, side: int = 512) -> float:
    """Variance of the Laplacian on a side x side greyscale copy (higher = sharper)."""
    import cv2

    g = np.asarray(im.convert("L").resize((side, side), Image.Resampling.BILINEAR), np.float64)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


def exposure(im: Image.Image) -> tuple[float, float, float]:
    """(mean luminance 0-255, share of near-black pixels, share of near-white pixels)."""
    g = np.asarray(im.convert("L").resize((256, 256), Image.Resampling.BILINEAR))
    return float(g.mean()), float((g <= 3).mean()), float((g >= 252).mean())


def framing_class(face_size: float | None, w: int, h: int) -> str:
    """How the source photo was shot, from the face's share of the short side."""
    if not face_size:
        return "no face"
    r = face_size / min(w, h)
    return "close-up" if r > 0.35 else "medium" if r > 0.15 else "wide"


@dataclass
class ImageFacts:
    file: str
    source: str
    size: tuple[int, int]
    crop: Image.Image
    faces: int
    face_size: float | None
    crop_side: float
    upscaled: bool
    near_duplicate_of: str | None = None
    face_note: str | None = None  # how the face was chosen among several (default: the largest)


def image_report(f: ImageFacts) -> dict[str, Any]:
    """Measurements and warnings for one image."""
    w, h = f.size
    sharp = sharpness(f.crop)
    mean, dark, bright = exposure(f.crop)
    warns: list[str] = []
    if f.faces == 0:
        warns.append("no face found: kept as a square of the whole photo; drop it unless the face "
                     "is clearly visible (turned faces may be missed by the Haar detector).")
    elif f.faces > 1:
        warns.append(f.face_note or f"{f.faces} faces: the largest was used; prefer photos of "
                     "only you.")
    if f.face_size is not None and f.face_size < 80:
        warns.append(f"tiny face ({f.face_size:.0f} px): use a closer or higher-resolution photo.")
    if sharp < BLUR_MIN:
        warns.append(f"looks blurry (sharpness {sharp:.0f} < {BLUR_MIN:.0f}): replace it with a "
                     "sharper photo.")
    if mean < DARK_MEAN or dark > CLIP_MAX:
        warns.append(f"underexposed (mean brightness {mean:.0f}/255, {dark:.0%} black): use a "
                     "brighter photo.")
    if mean > BRIGHT_MEAN or bright > CLIP_MAX:
        warns.append(f"overexposed (mean brightness {mean:.0f}/255, {bright:.0%} blown out): use a "
                     "photo with softer light.")
    if f.upscaled:
        warns.append(f"upscaled from {f.crop_side:.0f} px to 1024: a higher-resolution photo "
                     "trains better.")
    if f.near_duplicate_of:
        warns.append(f"near-duplicate of {f.near_duplicate_of}: keep only one unless the pose or "
                     "expression differs.")
    return {
        "file": f.file, "source": f.source, "width": w, "height": h,
        "sharpness": round(sharp, 1), "faces": f.faces,
        "face_size_px": None if f.face_size is None else round(f.face_size, 1),
        "face_to_photo": None if f.face_size is None else round(f.face_size / min(w, h), 3),
        "face_to_crop": None if f.face_size is None else round(f.face_size / f.crop_side, 3),
        "brightness": round(mean, 1), "clipped_dark": round(dark, 3),
        "clipped_bright": round(bright, 3), "upscaled": f.upscaled,
        "crop_source_px": round(f.crop_side, 1), "framing": framing_class(f.face_size, w, h),
        "duplicate_of": f.near_duplicate_of, "warnings": warns,
    }


def set_report(images: list[dict[str, Any]]) -> dict[str, Any]:
    """Checks over the whole set."""
    n = len(images)
    warns: list[str] = []
    lo, hi = RECOMMENDED
    if n == 0:
        warns.append("no usable photos: add 10-20 sharp photos of one person.")
    elif n < MIN_USEFUL:
        warns.append(f"only {n} photo(s): the LoRA will barely learn the face; add photos up to "
                     f"{lo}-{hi}.")
    elif n < lo:
        warns.append(f"{n} photos: {lo}-{hi} are recommended; add {lo - n} or more varied photos.")
    elif n > hi:
        warns.append(f"{n} photos: more than {hi} rarely helps; drop the weakest ones "
                     "(blurry, duplicates) or train with fewer repeats.")
    mix: dict[str, int] = {}
    for im in images:
        mix[im["framing"]] = mix.get(im["framing"], 0) + 1
    shots = {k: v for k, v in mix.items() if k != "no face"}
    if n >= 4 and len(shots) == 1:
        only = next(iter(shots))
        warns.append(f"every photo is a {only} shot: add some "
                     f"{'wider (upper body) shots' if only == 'close-up' else 'close-ups'} so the "
                     "LoRA learns the face at several scales.")
    dups = sum(1 for im in images if im.get("duplicate_of"))
    if dups:
        warns.append(f"{dups} near-duplicate photo(s): variety of pose, expression, light and "
                     "background matters more than count.")
    return {"count": n, "recommended": [lo, hi], "framing_mix": mix, "warnings": warns}
