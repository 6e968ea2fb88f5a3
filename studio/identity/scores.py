"""Likeness and identity bleed of a checkpoint's images, and the best checkpoint.

* **likeness**: for each image, the largest face that embeds is compared with the subject (the
  mean embedding of the training photos): ``likeness(distance)`` = 1 - distance. A step's
  likeness is the mean over the images where a face was found, reported with that share.
  Images without a face count in the share, never as a score of 0.
* **bleed**: images of prompts WITHOUT the trigger ("a photo of a person"), same seeds, scored
  the same way, minus the same prompts rendered without the LoRA (the baseline, once per run).
  0 means the LoRA leaves other people alone; 0.2 moves them a fifth of the way from a stranger
  (distance ~0.8) to the subject.
* **best checkpoint**: the highest likeness among the checkpoints whose bleed stays at or below
  ``max_bleed``; :func:`choose_best` says why in one line.

Pure functions over numbers and images: the engine is passed in (``IdentityEngine``), so tests
run them with fake vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from studio.identity.engine import distance, likeness

MAX_BLEED = 0.2
NO_FACE = "no face found in the samples"


@dataclass
class ImageScore:
    """One image: its likeness to the subject, None when no face embeds."""

    likeness: float | None

    @property
    def face(self) -> bool:
        return self.likeness is not None

    def label(self) -> str:
        return f"likeness {self.likeness:.2f}" if self.likeness is not None else "no face"


def score_image(engine: Any, rgb: np.ndarray, subject: np.ndarray) -> ImageScore:
    """The largest face of ``rgb`` (HxWx3 uint8) against the ``subject`` embedding."""
    faces = engine.embed(rgb)
    if not faces:
        return ImageScore(None)
    return ImageScore(round(float(likeness(distance(faces[0].vector, subject))), 4))


def mean_likeness(scores: list[ImageScore]) -> float | None:
    found = [s.likeness for s in scores if s.likeness is not None]
    return round(float(np.mean(found)), 4) if found else None


@dataclass
class StepScore:
    """The scores of one step (a validation or a checkpoint)."""

    step: int
    likeness: float | None        # mean over the images with a face; None: no face at all
    faces: int                    # images where a face was found
    images: int
    bleed: float | None = None    # bleed images' likeness minus the baseline's
    bleed_likeness: float | None = None
    baseline: float | None = None
    bleed_prompts: tuple[str, ...] = ()

    @property
    def face_share(self) -> float:
        return self.faces / self.images if self.images else 0.0

    def message(self) -> str:
        """What the row says in words when a number is missing."""
        if self.likeness is None:
            return NO_FACE
        if self.bleed is None and self.bleed_prompts:
            return "bleed unknown: no face in the images without the trigger or in the baseline"
        return ""

    def to_event(self) -> dict[str, Any]:
        """The fields of a "likeness" event (runs.events)."""
        return {"step": self.step, "likeness": self.likeness, "faces": self.faces,
                "images": self.images, "bleed": self.bleed,
                "bleed_likeness": self.bleed_likeness, "baseline": self.baseline,
                "bleed_prompts": list(self.bleed_prompts), "message": self.message()}

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> StepScore:
        def num(k):
            v = e.get(k)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return cls(int(e["step"]), num("likeness"), int(e.get("faces") or 0),
                   int(e.get("images") or 0), num("bleed"), num("bleed_likeness"),
                   num("baseline"), tuple(str(p) for p in e.get("bleed_prompts") or ()))


def step_score(step: int, samples: list[ImageScore], bleed: list[ImageScore] | None = None,
               baseline: list[ImageScore] | None = None,
               bleed_prompts: tuple[str, ...] = ()) -> StepScore:
    """A step's scores from its images' scores (``bleed`` and ``baseline``: the prompts without
    the trigger with and without the LoRA, same seeds)."""
    lk = mean_likeness(samples)
    b_lk = mean_likeness(bleed or [])
    base = mean_likeness(baseline or [])
    diff = round(b_lk - base, 4) if b_lk is not None and base is not None else None
    return StepScore(step, lk, sum(s.face for s in samples), len(samples), diff, b_lk, base,
                     tuple(bleed_prompts))


@dataclass
class Proposal:
    step: int | None   # None: no checkpoint can be proposed
    reason: str        # one line


def _quote(prompts: tuple[str, ...]) -> str:
    return " / ".join(f"'{p}'" for p in prompts) or "the prompts without the trigger"


def _bleeds(s: StepScore, max_bleed: float) -> bool:
    return s.bleed is not None and s.bleed > max_bleed


def _describe(s: StepScore) -> str:
    """'likeness 0.78 (best), bleed 0.05' (the face count only when some image had none)."""
    faces = f", faces {s.faces}/{s.images}" if s.faces < s.images else ""
    bleed = f"bleed {s.bleed:.2f}" if s.bleed is not None else "bleed unknown"
    return f"likeness {s.likeness:.2f} (best){faces}, {bleed}"


def choose_best(rows: list[StepScore], checkpoints: list[int],
                max_bleed: float = MAX_BLEED) -> Proposal:
    """The checkpoint (a step in ``checkpoints``) with the highest likeness whose bleed is at
    most ``max_bleed`` (an unknown bleed does not reject), and why in one line."""
    have = set(checkpoints)
    scored = [r for r in rows if r.step in have and r.likeness is not None]
    if not [r for r in rows if r.step in have]:
        return Proposal(None, "No checkpoint has been scored yet.")
    if not scored:
        return Proposal(None, f"No proposal: {NO_FACE} of any checkpoint.")
    ok = [r for r in scored if not _bleeds(r, max_bleed)]
    top = max(scored, key=lambda r: (r.likeness, r.step))
    if not ok:
        return Proposal(None, f"No proposal: every checkpoint bleeds more than {max_bleed:g}; "
                        f"checkpoint {top.step} has the best likeness {top.likeness:.2f} but "
                        f"bleeds {top.bleed:.2f} into {_quote(top.bleed_prompts)}.")
    best = max(ok, key=lambda r: (r.likeness, r.step))
    line = f"checkpoint {best.step}: {_describe(best)}"
    rejected = [r for r in scored if _bleeds(r, max_bleed) and r.likeness > best.likeness]
    if rejected:
        r = max(rejected, key=lambda x: (x.likeness, x.step))
        line += (f"; checkpoint {r.step} is {r.likeness:.2f} but bleeds {r.bleed:.2f} into "
                 f"{_quote(r.bleed_prompts)}")
    return Proposal(best.step, line + ".")


def table_rows(rows: list[StepScore], chosen: int | None) -> list[list[str]]:
    """[step, likeness, faces found, bleed, chosen] as text, one row per step."""
    def num(v):
        return f"{v:.2f}" if v is not None else "-"

    return [[str(r.step), num(r.likeness) if r.likeness is not None else NO_FACE,
             f"{r.faces}/{r.images}", num(r.bleed), "*" if r.step == chosen else ""]
            for r in rows]


def format_table(rows: list[StepScore], chosen: int | None) -> str:
    head = ["step", "likeness", "faces found", "bleed", "chosen"]
    body = table_rows(rows, chosen)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in [head, *body])


MEASURED = ("Likeness is 1 - the euclidean distance between face embeddings (dlib's ResNet "
            "face model) of the validation images and the mean of the training photos, averaged "
            "over the images where a face was found; the same person scores above 0.4 (dlib's "
            "distance threshold 0.6). Bleed is the same score for prompts without the trigger "
            "({prompts}) minus those prompts without the LoRA, at the same seeds. They measure "
            "identity, not image quality or prompt fidelity.")


def card_section(entry: dict[str, Any], step: int | None) -> list[str]:
    """The model card's "Likeness" section for the LoRA of ``step`` from the manifest's
    "likeness" entry ([] when it has none)."""
    rows = {r.get("step"): r for r in entry.get("checkpoints") or []}
    row = rows.get(step)
    if not row:
        return []
    s = StepScore.from_event(row)
    prompts = _quote(tuple(entry.get("bleed_prompts") or ()))
    lines = ["## Likeness", "", "| checkpoint | likeness | faces found | bleed |",
             "|---|---|---|---|",
             "| {} | {} | {}/{} | {} |".format(
                 s.step, f"{s.likeness:.2f}" if s.likeness is not None else NO_FACE, s.faces,
                 s.images, f"{s.bleed:.2f}" if s.bleed is not None else "-"), ""]
    if entry.get("reason"):
        lines += [f"Best checkpoint of the run: {entry['reason']}", ""]
    return lines + [MEASURED.format(prompts=prompts), ""]
