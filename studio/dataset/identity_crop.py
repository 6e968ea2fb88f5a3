"""The crop follows the set's identity: in a photo with several faces, the face that looks like
the person in the other photos is cropped, not the largest.

The identity is the look-alike group (:func:`studio.dataset.identity.group`) of the crops of
single-face photos; it is used once it has :data:`MIN_IDENTITY` members. Then every photo with
several faces, with none, or whose crop does not look like that identity is searched with the
identity engine (which also finds faces the face detector missed) and cropped again on the face
that matches, if one does. Without an identity the largest face stays, with the usual warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.dataset.crop import CropResult, crop_face
from studio.dataset.faces import Face
from studio.dataset.identity import MIN_IDENTITY, embed_crop, identity_center
from studio.identity.engine import SAME_PERSON, FaceEmbedding, IdentityEngine, distance

log = logging.getLogger(__name__)


@dataclass
class Followed:
    """One photo after the identity step: its crop, the crop's embedding, the faces found and,
    when the face was chosen by identity, the sentence saying so."""

    crop: CropResult
    embedding: FaceEmbedding | None
    faces: int
    note: str | None = None


def _inside(pt: tuple[float, float], box) -> bool:
    return box[0] <= pt[0] <= box[2] and box[1] <= pt[1] <= box[3]


def follow_identity(engine: IdentityEngine, photos: list[tuple[Image.Image, list[Face],
                                                                CropResult]],
                    framing: str, say: Callable[[float, str], None] | None = None
                    ) -> list[Followed]:
    """Embed every crop; with an established identity, crop again on the matching face where
    the first crop shows someone else or the photo has several faces."""
    out = []
    for i, (_, faces, crop) in enumerate(photos):
        if say:
            say(i / max(len(photos), 1), f"measuring the face in photo {i + 1}/{len(photos)}")
        out.append(Followed(crop, embed_crop(engine, crop), len(faces)))
    singles = [f.embedding.vector if f.faces == 1 and f.embedding else None for f in out]
    ident = identity_center(singles, MIN_IDENTITY)
    if ident is None:
        return out
    for (image, faces, _), f in zip(photos, out, strict=True):
        off = f.embedding is None or distance(f.embedding.vector, ident) >= SAME_PERSON
        if f.faces == 1 and not off:
            continue
        try:
            _refollow(engine, image, faces, framing, ident, f)
        except Exception:  # one photo never stops the batch
            log.exception("choosing the face by identity failed")
    return out


def _refollow(engine: IdentityEngine, image: Image.Image, faces: list[Face], framing: str,
              ident: np.ndarray, f: Followed) -> None:
    """Search the whole photo for the face nearest the identity; crop it when it matches."""
    found = engine.embed(np.asarray(image.convert("RGB")))
    f.faces = max(f.faces, len(found))
    if not found:
        return
    match = min(found, key=lambda e: distance(e.vector, ident))
    d = distance(match.vector, ident)
    if d >= SAME_PERSON:
        return
    if f.faces > 1:
        f.note = (f"{f.faces} faces: the one that looks like the person in the other photos was "
                  f"used (distance {d:.2f}).")
    if f.crop.face is not None and _inside(f.crop.face.center, match.box) and f.embedding:
        return  # the crop already shows this face
    # The detector's own face there (it has eyes or landmarks for levelling), else dlib's box.
    face = next((x for x in faces if _inside(x.center, match.box)), None)
    if face is None:
        face = Face(box=match.box, score=match.score)
        faces = [*faces, face]
    crop = crop_face(image, faces, framing, face=face)
    crop.faces_found = f.faces
    f.crop, f.embedding = crop, embed_crop(engine, crop) or match
