"""photos -> dataset: ingest, detect + align + crop, caption, quality report, store.

:func:`prepare_dataset` is what both ``python -m studio prepare`` and the Dataset tab call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from studio.dataset import DatasetError
from studio.dataset.caption import (
    DEFAULT_CLASS_WORD,
    DEFAULT_TEMPLATE,
    DEFAULT_TRIGGER,
    lint_captions,
    render,
    trigger_warnings,
)
from studio.dataset.captioners import DEFAULT_CAPTIONER, Captioner, get_captioner
from studio.dataset.crop import DEFAULT_FRAMING, FRAMING_CHOICES, CropResult, crop_face
from studio.dataset.faces import Face, FaceDetector, get_detector
from studio.dataset.identity import PhotoIdentity, apply_to_report, to_json
from studio.dataset.identity_crop import Followed, follow_identity
from studio.dataset.ingest import MIN_SIDE, IngestedImage, InputItem, ingest
from studio.dataset.masks import face_mask
from studio.dataset.quality import ImageFacts, image_report, set_report
from studio.dataset.store import DatasetInfo, Entry, write_dataset
from studio.identity.engine import IdentityEngine, IdentityError, get_engine

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
NO_FACE_CHOICES = ["keep", "drop"]


@dataclass
class FileOutcome:
    """What happened to one input file."""

    file: str
    status: str  # "accepted", "rejected" or "dropped"
    reason: str = ""
    output: str | None = None
    caption: str = ""
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        if self.status == "accepted":
            extra = f" ({'; '.join(self.warnings)})" if self.warnings else ""
            return f"ok       {self.file} -> {self.output}{extra}"
        return f"{self.status:<8} {self.file}: {self.reason}"


@dataclass
class PrepareResult:
    outcomes: list[FileOutcome]
    notices: list[str]
    report: dict[str, Any]
    dataset: DatasetInfo | None

    @property
    def count(self) -> int:
        return sum(1 for o in self.outcomes if o.status == "accepted")


def prepare_dataset(inputs: Iterable[InputItem], out_dir: str | Path, trigger: str = DEFAULT_TRIGGER,
                    class_word: str = DEFAULT_CLASS_WORD, framing: str = DEFAULT_FRAMING,
                    detector: str | FaceDetector = "auto",
                    captioner: str | Captioner | None = None, progress: Progress | None = None,
                    template: str = DEFAULT_TEMPLATE, no_face: str = "keep",
                    min_side: int = MIN_SIDE, name: str | None = None, overwrite: bool = False,
                    workspace=None, captioner_kind: str = DEFAULT_CAPTIONER,
                    identity: str | IdentityEngine | None = "dlib") -> PrepareResult:
    """Turn photos into a dataset folder at ``out_dir``; never stops on one bad file.

    ``detector`` is "auto" | "retinaface" | "haar" or a :class:`FaceDetector`; ``captioner`` the
    model of a ``captioner_kind`` captioner (a Hub id/folder; default: STUDIO_CAPTION_MODEL) or a
    :class:`Captioner`. ``identity`` is the identity engine (a name, an engine, or None for no
    identity checks) that embeds every crop, flags photos of someone else and picks the face
    that matches the set in photos with several faces. ``no_face`` decides whether photos
    without a face are kept (square of the whole photo) or dropped. Raises :class:`DatasetError` only when nothing usable remains or the
    settings are invalid.
    """
    def say(frac: float, msg: str) -> None:
        if progress:
            progress(min(max(frac, 0.0), 1.0), msg)

    trigger, class_word = (trigger or "").strip(), (class_word or "").strip()
    _check_settings(trigger, class_word, framing, no_face, template)
    notices = trigger_warnings(trigger, class_word)

    say(0.0, "reading photos")
    ing = ingest(inputs, min_side=min_side, progress=lambda f, m: say(0.25 * f, m))
    outcomes = [FileOutcome(r.name, "rejected", r.reason) for r in ing.rejected]
    if isinstance(detector, str):
        det, notice = get_detector(detector)
        notices += [notice] if notice else []
    else:
        det = detector
    detected = _crop_all(ing.accepted, det, framing, no_face, outcomes,
                         lambda f, m: say(0.25 + 0.25 * f, m))
    engine = _identity_engine(identity, notices)
    followed = _follow(engine, detected, framing, lambda f, m: say(0.5 + 0.1 * f, m))
    kept = [(img, f.crop) for (img, _, _), f in zip(detected, followed, strict=True)]
    if not kept:
        shown = "; ".join(f"{o.file}: {o.reason}" for o in outcomes[:5])
        more = f"; and {len(outcomes) - 5} more" if len(outcomes) > 5 else ""
        raise DatasetError(f"No usable photos remain ({shown or 'no files found'}{more}); add "
                           "10-20 sharp photos of one person.")

    say(0.6, "captioning")
    cap = captioner if isinstance(captioner, Captioner) else \
        get_captioner(captioner_kind, captioner)
    raw = cap.caption([c.image for _, c in kept],
                      progress=lambda done, total: say(0.6 + 0.3 * done / total,
                                                       f"captioning {done}/{total}"))
    captions = [render(template, trigger, class_word, text) for text in raw]
    entries, images_report = _entries(kept, captions, outcomes, followed)
    report = {
        "images": images_report, "set": set_report(images_report), "notices": notices,
        "lint": lint_captions(captions, trigger, class_word, [e.file_name for e in entries]),
        "rejected": [{"file": o.file, "status": o.status, "reason": o.reason}
                     for o in outcomes if o.status != "accepted"],
        "settings": {"trigger": trigger, "class_word": class_word, "framing": framing,
                     "detector": getattr(det, "name", str(det)), "template": template,
                     "no_face": no_face, "min_side": min_side},
    }
    cache = _identity_report(engine, entries, followed, report)
    say(0.92, "writing the dataset")
    meta = {"name": name or Path(out_dir).name, "trigger": trigger, "class_word": class_word,
            "template": template, "framing": framing, "detector": getattr(det, "name", "?"),
            "captioner": str(cap.source or ""), "version": 1}
    ds = write_dataset(out_dir, entries, meta, report, overwrite=overwrite, workspace=workspace,
                       identity=cache)
    say(1.0, f"{len(entries)} image(s) ready")
    return PrepareResult(outcomes, notices, report, ds)


def _check_settings(trigger: str, class_word: str, framing: str, no_face: str,
                    template: str) -> None:
    """Refuse bad settings before any work."""
    if not trigger:
        raise DatasetError("The trigger is empty; use a rare token such as ohwx, sks or TOK.")
    if framing not in FRAMING_CHOICES:
        raise DatasetError(f"Unknown framing {framing!r}; use one of {', '.join(FRAMING_CHOICES)}.")
    if no_face not in NO_FACE_CHOICES:
        raise DatasetError(f"Unknown no-face choice {no_face!r}; use keep or drop.")
    render(template, trigger, class_word, "x")  # validates the template


def _identity_engine(identity: str | IdentityEngine | None,
                     notices: list[str]) -> IdentityEngine | None:
    """The identity engine, or None (with a notice when it cannot load)."""
    if identity is None or not isinstance(identity, str):
        return identity
    try:
        return get_engine(identity)
    except IdentityError as exc:
        notices.append(f"Notice: the photos are not checked for one person ({str(exc).rstrip('.')}).")
        return None


def _follow(engine: IdentityEngine | None,
            detected: list[tuple[IngestedImage, list[Face], CropResult]], framing: str,
            say: Progress) -> list[Followed]:
    """Embed every crop and let crops follow the set's identity (without an engine: as is)."""
    if engine is None:
        return [Followed(crop, None, len(faces)) for _, faces, crop in detected]
    return follow_identity(engine, [(img.image, faces, crop) for img, faces, crop in detected],
                           framing, say)


def _identity_report(engine: IdentityEngine | None, entries: list[Entry],
                     followed: list[Followed], report: dict[str, Any]) -> dict[str, Any] | None:
    """Distances and outlier warnings into the report; the embeddings to cache (or None)."""
    if engine is None:
        return None
    apply_to_report(report, [PhotoIdentity(e.file_name, e.source,
                                           f.embedding.vector if f.embedding else None, f.faces)
                             for e, f in zip(entries, followed, strict=True)], engine.name)
    return to_json({e.file_name: f.embedding for e, f in zip(entries, followed, strict=True)},
                   engine.name)


def _crop_all(accepted: list[IngestedImage], det: FaceDetector, framing: str, no_face: str,
              outcomes: list[FileOutcome], say: Progress
              ) -> list[tuple[IngestedImage, list[Face], CropResult]]:
    """Find the faces in each photo and crop the largest; failures and drops go into
    ``outcomes``."""
    kept = []
    for i, img in enumerate(accepted):
        say(i / max(len(accepted), 1), f"finding the face in {img.name}")
        try:
            faces = det.detect(np.asarray(img.image))
            crop = crop_face(img.image, faces, framing)
        except DatasetError:
            raise
        except Exception as exc:  # never let one photo stop the batch
            log.exception("face step failed on %s", img.name)
            outcomes.append(FileOutcome(img.name, "rejected",
                                        f"face detection failed ({type(exc).__name__}: {exc})"))
            continue
        if not faces and no_face == "drop":
            outcomes.append(FileOutcome(img.name, "dropped", "no face found (--no-face drop)"))
            continue
        kept.append((img, faces, crop))
    return kept


def _entries(kept: list[tuple[IngestedImage, CropResult]], captions: list[str],
             outcomes: list[FileOutcome], followed: list[Followed]
             ) -> tuple[list[Entry], list[dict[str, Any]]]:
    """The dataset entries (0001.png ...) and their quality reports; one outcome each."""
    entries: list[Entry] = []
    images_report: list[dict[str, Any]] = []
    for idx, ((img, crop), caption, fol) in enumerate(zip(kept, captions, followed, strict=True),
                                                     start=1):
        file_name = f"{idx:04d}.png"
        facts = ImageFacts(file=file_name, source=img.name, size=img.original_size,
                           crop=crop.image, faces=fol.faces,
                           face_size=crop.face.size if crop.face else None,
                           crop_side=crop.source_side, upscaled=crop.upscaled,
                           near_duplicate_of=img.near_duplicate_of, face_note=fol.note)
        rep = image_report(facts)
        rep["warnings"] += [w for w in crop.warnings if not _covered(w, rep["warnings"])]
        rep["notes"] = img.notes
        rep["crop_method"] = crop.method
        images_report.append(rep)
        entries.append(Entry(file_name, crop.image, img.image, caption, img.name, face_mask(crop)))
        outcomes.append(FileOutcome(img.name, "accepted", output=file_name, caption=caption,
                                    warnings=rep["warnings"]))
    return entries, images_report


def _covered(warning: str, existing: list[str]) -> bool:
    """Crop warnings already said by the quality report (same topic)."""
    keys = ("faces found", "face is only", "upscaled")
    topics = {"faces found": "faces:", "face is only": "tiny face", "upscaled": "upscaled"}
    for k in keys:
        if k in warning:
            return any(topics[k] in e for e in existing)
    return False
