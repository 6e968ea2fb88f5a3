"""The subject of a run: the face identity of its training photos.

The mean embedding of the largest group of look-alike photos (:mod:`studio.dataset.identity`;
a prepared dataset's crop embeddings come from its cache), computed once and kept in
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
from studio.identity.engine import IdentityEngine, get_engine
from studio.runs.folder import RunError, RunFolder

log = logging.getLogger(__name__)

MAX_PHOTOS = 64  # photos embedded from a dataset without cached embeddings


@dataclass
class Subject:
    vector: np.ndarray | None   # None: no training photo showed a face
    faces: int                  # photos whose face embedded
    images: int
    engine: str
    dataset_hash: str | None = None
    group: int = 0              # photos in the largest look-alike group (the identity)

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "faces": self.faces, "images": self.images,
                "group": self.group, "dataset_hash": self.dataset_hash,
                "vector": None if self.vector is None else [round(float(v), 6)
                                                            for v in self.vector]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Subject:
        vec = d.get("vector")
        return cls(None if vec is None else np.asarray(vec, np.float32), int(d.get("faces") or 0),
                   int(d.get("images") or 0), str(d.get("engine")), d.get("dataset_hash"),
                   int(d.get("group") or 0))


def embed_images(images, engine: IdentityEngine) -> list[np.ndarray | None]:
    """The largest face's embedding of each PIL image (None where no face embeds), embedded at
    the dataset's crop size."""
    from studio.dataset.identity import embed_image

    out = []
    for im in images:
        faces = embed_image(engine, im)
        out.append(faces[0].vector if faces else None)
    return out


def subject_from(vectors: list[np.ndarray | None], images: int, engine: str,
                 dataset_hash: str | None) -> Subject:
    """The set's identity: the mean of its largest group of look-alike photos, so one photo
    of someone else does not move it (studio.dataset.identity)."""
    from studio.dataset.identity import group, identity_center

    return Subject(identity_center(vectors), sum(v is not None for v in vectors), images,
                   engine, dataset_hash, len(group(vectors)))


def subject_of(examples, engine: IdentityEngine, dataset_hash: str | None = None,
               folder: str | None = None) -> Subject:
    """The subject of training ``examples`` (``studio.dataset.sources.Example``); a prepared
    dataset ``folder`` gives its cached crop embeddings instead."""
    from studio.dataset import store

    if folder and store.is_dataset(folder):
        from studio.dataset.identity import dataset_embeddings

        found = list(dataset_embeddings(folder, engine).values())
        vecs = [f.vector if f is not None else None for f in found]
    else:  # a large set (a style dataset) is judged on an even spread of its photos
        step = max(1, -(-len(examples) // MAX_PHOTOS))
        vecs = embed_images((ex.load() for ex in examples[::step]), engine)
    return subject_from(vecs, len(examples), engine.name, dataset_hash)


def dataset_subject(cfg, engine: IdentityEngine) -> Subject:
    """The subject of the dataset ``cfg`` (a TrainConfig) trains on."""
    from studio.dataset.sources import load_dataset

    d = cfg.data
    ds = load_dataset(d.dataset or "", d.image_column, d.caption_column)
    return subject_of(ds.examples, engine, ds.hash, d.dataset)


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
