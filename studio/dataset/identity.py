"""One person, the right face: identity checks of a photo set with the identity engine.

Each crop is embedded (:func:`embed_crop`). The set's identity is its largest group of
look-alike photos: the photo with the most others within :data:`SAME_PERSON` (ties: the smallest
total distance) together with those others (:func:`group`), so one wrong photo never moves the
centre. A photo's distance to the set is its distance to the mean of that group without itself
(leave-one-out), so no photo vouches for itself (:func:`set_distances`). A photo at
:data:`SAME_PERSON` or more is flagged by name (:func:`assess`).

:func:`dataset_embeddings` gives the embeddings of a prepared dataset's crops, cached in the
dataset folder (through :mod:`studio.dataset.store`) and recomputed when its hash changes.
Choosing the face in a photo with several faces is :mod:`studio.dataset.identity_crop`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.dataset.crop import CropResult, align
from studio.identity.engine import (
    SAME_PERSON,
    FaceEmbedding,
    IdentityEngine,
    center,
    distance,
    get_engine,
)

log = logging.getLogger(__name__)

MIN_IDENTITY = 3
"""Single-face photos that must look alike before the set's identity is used to pick faces."""
EMBED_SIDE = 512
"""Crops are embedded at this size: the face stays far above the detector's ~80 px minimum
(head-and-shoulders: ~170 px) and detection costs a quarter of the 1024 px crop's."""
NOT_MEASURED = ("identity not measured: no face here is clear enough for the identity model "
                "(it looks away, is covered or is too small), so it is not compared with the other "
                "photos; keep it only if it is the same person.")


def embed_image(engine: IdentityEngine, image: Image.Image,
                side: int = EMBED_SIDE) -> list[FaceEmbedding]:
    """Faces of ``image`` embedded at most ``side`` px wide, boxes in ``image``'s pixels."""
    scale = min(1.0, side / max(image.size))
    small = image.convert("RGB")
    if scale < 1:
        small = small.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BILINEAR)
    found = engine.embed(np.asarray(small))
    for f in found:
        f.box = tuple(v / scale for v in f.box)
    return found


def embed_crop(engine: IdentityEngine, crop: CropResult) -> FaceEmbedding | None:
    """The embedding of the face the crop was made for: the face nearest where the detected
    face landed in the crop, or the largest for a crop of the whole photo; None when no face
    there embeds."""
    try:
        found = embed_image(engine, crop.image)
    except Exception:  # one photo never stops the batch
        log.exception("embedding a crop failed")
        return None
    if not found:
        return None
    if crop.window is None or crop.face is None:
        return found[0]
    ex, ey = crop.window.to_crop(align(crop.face).center, crop.image.width)

    def off(f: FaceEmbedding) -> float:
        return float(np.hypot(f.center[0] - ex, f.center[1] - ey))

    best = min(found, key=off)
    return best if off(best) < best.box[2] - best.box[0] else None


def group(vectors: list[np.ndarray | None]) -> list[int]:
    """Indexes of the largest group of look-alike vectors (see the module docstring)."""
    idx = [i for i, v in enumerate(vectors) if v is not None]
    if not idx:
        return []
    v = np.stack([np.asarray(vectors[i], np.float64) for i in idx])
    d = np.linalg.norm(v[:, None, :] - v[None, :, :], axis=2)
    near = (d < SAME_PERSON).sum(axis=1)
    best = min(range(len(idx)), key=lambda k: (-int(near[k]), float(d[k].sum())))
    return [idx[k] for k in range(len(idx)) if d[best, k] < SAME_PERSON]


def identity_center(vectors: list[np.ndarray | None], minimum: int = 1) -> np.ndarray | None:
    """The mean of the largest look-alike group, or None when it has fewer than ``minimum``."""
    g = group(vectors)
    return center([vectors[i] for i in g]) if g and len(g) >= minimum else None


def set_distances(vectors: list[np.ndarray | None]) -> list[float | None]:
    """Each vector's distance to the group's mean without itself; None when not measured."""
    g = group(vectors)
    out: list[float | None] = []
    for i, v in enumerate(vectors):
        others = [vectors[j] for j in g if j != i]
        out.append(None if v is None or not others else round(distance(v, center(others)), 3))
    return out


@dataclass
class PhotoIdentity:
    """One photo of a set: its name in the dataset, its source file, its crop's embedding (or
    None) and how many faces were found in it."""

    file: str
    source: str
    vector: np.ndarray | None
    faces: int = 1


def outlier_sentence(file: str, source: str, others: int, d: float) -> str:
    label = f"{file} ({source})" if source and source != file else file
    return (f"{label} does not look like the same person as the other {others} photo"
            f"{'s' if others != 1 else ''} (distance {d:.2f}; same person is below "
            f"{SAME_PERSON}): drop it or check it.")


def assess(photos: list[PhotoIdentity], engine_name: str = "dlib") -> dict[str, Any]:
    """Per photo ``{"distance", "warning"}`` and the set's summary with its warnings."""
    vectors = [p.vector for p in photos]
    g, dists = group(vectors), set_distances(vectors)
    measured = sum(v is not None for v in vectors)
    one_person = measured >= 3 and len(g) >= 2 and 2 * len(g) > measured
    per_image, outliers, named = [], [], []
    for i, (p, d) in enumerate(zip(photos, dists, strict=True)):
        warning = None
        if p.vector is None:
            warning = NOT_MEASURED if p.faces else None
        elif one_person and d is not None and d >= SAME_PERSON:
            warning = outlier_sentence(p.file, p.source, len(g) - (i in g), d)
            outliers.append(p.file)
            named.append(f"{p.file} ({p.source})" if p.source and p.source != p.file else p.file)
        per_image.append({"distance": d, "warning": warning})
    warnings = []
    if measured >= 3 and not one_person:
        warnings.append(f"the photos do not show one person: the largest group that looks alike "
                        f"is {len(g)} of the {measured} measured photos (same person is below "
                        f"{SAME_PERSON}); use photos of one person only.")
    if outliers:
        warnings.append(f"{len(outliers)} photo(s) do not look like the others: "
                        f"{', '.join(named)}.")
    summary = {"engine": engine_name, "same_person_below": SAME_PERSON, "measured": measured,
               "group": len(g), "outliers": outliers,
               "not_measured": [p.file for p in photos if p.vector is None],
               "warnings": warnings}
    return {"images": per_image, "set": summary}


def apply_to_report(report: dict[str, Any], photos: list[PhotoIdentity],
                    engine_name: str = "dlib") -> None:
    """Write each photo's distance and warning, and the set's identity summary, into a quality
    report (``report["images"]`` in the order of ``photos``)."""
    result = assess(photos, engine_name)
    for im, got in zip(report["images"], result["images"], strict=True):
        im["identity_distance"] = got["distance"]
        if got["warning"]:
            im["warnings"].append(got["warning"])
    report["identity"] = result["set"]
    report["set"]["warnings"] += result["set"]["warnings"]


# ---- the cache of a prepared dataset ----------------------------------------------------------
def to_json(embeddings: dict[str, FaceEmbedding | None], engine_name: str) -> dict[str, Any]:
    faces = {k: None if e is None else {"box": [round(float(v), 1) for v in e.box],
                                        "vector": [float(x) for x in e.vector]}
             for k, e in embeddings.items()}
    return {"engine": engine_name, "faces": faces}


def from_json(data: dict[str, Any]) -> dict[str, FaceEmbedding | None]:
    return {k: None if f is None else FaceEmbedding(tuple(f["box"]),
                                                   np.asarray(f["vector"], np.float32))
            for k, f in (data.get("faces") or {}).items()}


def dataset_embeddings(folder: str | Path, engine: IdentityEngine | None = None
                       ) -> dict[str, FaceEmbedding | None]:
    """{file name: embedding of its crop, or None} for a prepared dataset; read from the cache
    when it belongs to the dataset's current hash, else computed from the crops and stored."""
    from studio.dataset import store

    engine = engine or get_engine()
    ds = store.open_dataset(folder)
    names = [e["file_name"] for e in ds.entries]
    cached = store.read_identity(ds.path)
    if cached and cached.get("engine") == engine.name and set(cached.get("faces") or {}) == set(names):
        return from_json(cached)
    out: dict[str, FaceEmbedding | None] = {}
    for name in names:
        with Image.open(ds.image_path(name)) as im:
            found = embed_image(engine, im)
        out[name] = found[0] if found else None
    store.write_identity(ds.path, to_json(out, engine.name))
    return out
