"""The subject of a run: the mean face embedding of its training photos.

Computed once from the dataset the run trains on (the largest face of each photo) and kept in
the run folder (``RunFolder.identity_path``), so a run is scored against the photos it was
trained on even after its dataset changed or moved. A dataset without faces has no subject:
likeness is then off unless it was asked for (``validation.likeness``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from studio.fsutil import atomic_write_json
from studio.identity.engine import IdentityEngine, center, get_engine
from studio.runs.folder import RunError, RunFolder

log = logging.getLogger(__name__)


@dataclass
class Subject:
    vector: np.ndarray | None   # None: no training photo showed a face
    faces: int                  # photos whose face embedded
    images: int
    engine: str
    dataset_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "faces": self.faces, "images": self.images,
                "dataset_hash": self.dataset_hash,
                "vector": None if self.vector is None else [round(float(v), 6)
                                                            for v in self.vector]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Subject:
        vec = d.get("vector")
        return cls(None if vec is None else np.asarray(vec, np.float32), int(d.get("faces") or 0),
                   int(d.get("images") or 0), str(d.get("engine")), d.get("dataset_hash"))


def embed_images(images, engine: IdentityEngine) -> list[np.ndarray | None]:
    """The largest face's embedding of each PIL image (None where no face embeds)."""
    out = []
    for im in images:
        faces = engine.embed(np.asarray(im.convert("RGB")))
        out.append(faces[0].vector if faces else None)
    return out


def subject_of(examples, engine: IdentityEngine, dataset_hash: str | None = None) -> Subject:
    """The subject of training ``examples`` (``studio.dataset.sources.Example``)."""
    vecs = [v for v in embed_images((ex.load() for ex in examples), engine) if v is not None]
    return Subject(center(vecs) if vecs else None, len(vecs), len(examples), engine.name,
                   dataset_hash)


def dataset_subject(cfg, engine: IdentityEngine) -> Subject:
    """The subject of the dataset ``cfg`` (a TrainConfig) trains on."""
    from studio.dataset.sources import load_dataset

    d = cfg.data
    ds = load_dataset(d.dataset or "", d.image_column, d.caption_column)
    return subject_of(ds.examples, engine, ds.hash)


def save_subject(run: RunFolder, subject: Subject) -> None:
    atomic_write_json(run.identity_path, subject.to_json())


def load_subject(run: RunFolder) -> Subject | None:
    try:
        return Subject.from_json(json.loads(run.identity_path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def run_subject(run: RunFolder, engine: IdentityEngine | None = None) -> Subject:
    """The run's subject: kept in the run folder, else computed from its dataset (and kept)."""
    engine = engine or get_engine()
    kept = load_subject(run)
    if kept is not None and kept.engine == engine.name:
        return kept
    cfg = run.config()
    if not cfg.data.dataset:
        raise RunError(f"The run {run.name} names no dataset, so there is no face to compare "
                       "its images with.")
    from studio.dataset import DatasetError

    try:
        subject = dataset_subject(cfg, engine)
    except DatasetError as exc:
        raise RunError(f"The run's dataset cannot be read ({exc}); likeness compares with its "
                       "photos.") from None
    save_subject(run, subject)
    return subject
