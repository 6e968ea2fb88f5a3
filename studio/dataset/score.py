"""``python -m studio score-photos FOLDER_OR_DATASET``: does a photo set show one person?

A prepared dataset is scored from its crops' embeddings (cached in the dataset folder); a
folder (or zip) of photos is read and checked as ``prepare`` would read it, every face in each
photo embedded. In a photo with several faces the one matching the set's identity counts (once
three single-face photos establish it), else the largest. The verdicts and the distances come
from :func:`studio.dataset.identity.assess`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from studio.dataset import DatasetError
from studio.dataset.identity import (
    MIN_IDENTITY,
    PhotoIdentity,
    assess,
    dataset_embeddings,
    identity_center,
)
from studio.identity.engine import SAME_PERSON, FaceEmbedding, IdentityEngine, distance, get_engine


@dataclass
class PhotoScore:
    photo: str
    faces: int | None
    distance: float | None
    verdict: str
    sentence: str | None = None


@dataclass
class ScoreReport:
    target: Path
    rows: list[PhotoScore]
    warnings: list[str] = field(default_factory=list)

    @property
    def one_person(self) -> bool:
        return not self.warnings

    def table(self) -> str:
        width = max([len("photo")] + [len(r.photo) for r in self.rows])
        lines = [f"{'photo':<{width}}  faces  distance  verdict"]
        for r in self.rows:
            faces = "-" if r.faces is None else str(r.faces)
            dist = "-" if r.distance is None else f"{r.distance:.2f}"
            lines.append(f"{r.photo:<{width}}  {faces:>5}  {dist:>8}  {r.verdict}")
        return "\n".join(lines)


def _verdict(p: PhotoIdentity, d: float | None, warning: str | None) -> str:
    if p.vector is None:
        return "not measured (looks away or too small)" if p.faces else "no face found"
    if warning:
        return "someone else?"
    return "same person" if d is None or d < SAME_PERSON else "far from the others"


def _rows(photos: list[PhotoIdentity], labels: list[str], engine: IdentityEngine
          ) -> tuple[list[PhotoScore], list[str]]:
    res = assess(photos, engine.name)
    rows = [PhotoScore(label, p.faces, got["distance"], _verdict(p, got["distance"],
                                                               got["warning"]), got["warning"])
            for p, label, got in zip(photos, labels, res["images"], strict=True)]
    return rows, res["set"]["warnings"]


def pick_faces(found: list[list[FaceEmbedding]]) -> list[FaceEmbedding | None]:
    """The face that counts in each photo: with an identity from single-face photos, the one
    nearest it when it is the same person, else the largest."""
    ident = identity_center([f[0].vector if len(f) == 1 else None for f in found], MIN_IDENTITY)
    out = []
    for faces in found:
        best = faces[0] if faces else None
        if ident is not None and len(faces) > 1:
            near = min(faces, key=lambda e: distance(e.vector, ident))
            best = near if distance(near.vector, ident) < SAME_PERSON else best
        out.append(best)
    return out


def score_photos(target: str | Path, engine: IdentityEngine | None = None) -> ScoreReport:
    """Score a prepared dataset or a folder/zip of photos; bad input is a :class:`DatasetError`."""
    from studio.dataset import store

    path = Path(target).expanduser()
    if not path.exists():
        raise DatasetError(f"{path} does not exist; give a folder of photos, a zip or a prepared "
                           "dataset.")
    engine = engine or get_engine()
    if store.is_dataset(path):
        return _score_dataset(path, engine)
    return _score_folder(path, engine)


def _score_dataset(path: Path, engine: IdentityEngine) -> ScoreReport:
    from studio.dataset import store

    ds = store.open_dataset(path)
    embedded = dataset_embeddings(ds.path, engine)
    sources = ds.info.get("sources") or {}
    faces = {im.get("file"): im.get("faces") for im in (ds.report or {}).get("images", [])}
    photos, labels = [], []
    for e in ds.entries:
        name, emb = e["file_name"], embedded.get(e["file_name"])
        photos.append(PhotoIdentity(name, sources.get(name, ""), None if emb is None else
                                    emb.vector, faces.get(name) or (1 if emb else 0)))
        labels.append(f"{name} ({sources[name]})" if sources.get(name) else name)
    rows, warnings = _rows(photos, labels, engine)
    return ScoreReport(ds.path, rows, warnings)


def _score_folder(path: Path, engine: IdentityEngine) -> ScoreReport:
    from studio.dataset.ingest import ingest

    ing = ingest([path])
    if not ing.accepted:
        shown = "; ".join(f"{r.name}: {r.reason}" for r in ing.rejected[:3])
        raise DatasetError(f"No usable photos in {path} ({shown or 'no image files found'}); give "
                           "a folder of photos of one person.")
    found = [engine.embed(np.asarray(img.image)) for img in ing.accepted]
    chosen = pick_faces(found)
    photos = [PhotoIdentity(img.name, img.name, None if c is None else c.vector, len(f))
              for img, f, c in zip(ing.accepted, found, chosen, strict=True)]
    rows, warnings = _rows(photos, [img.name for img in ing.accepted], engine)
    rows += [PhotoScore(r.name, None, None, f"not used: {r.reason}") for r in ing.rejected]
    return ScoreReport(path, rows, warnings)
