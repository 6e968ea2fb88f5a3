"""``python -m studio prepare INPUT... --out DATASET_DIR``: photos -> dataset (same core as the UI);
``python -m studio score-photos FOLDER_OR_DATASET``: does a photo set show one person?"""

from __future__ import annotations

import sys
from pathlib import Path

from studio.dataset.crop import DEFAULT_FRAMING, FRAMING_CHOICES
from studio.dataset.faces import DETECTOR_CHOICES


def add_cli(sub) -> None:
    from studio.dataset.caption import DEFAULT_CLASS_WORD, DEFAULT_TEMPLATE, DEFAULT_TRIGGER
    from studio.dataset.captioners import CAPTIONERS, DEFAULT_CAPTIONER
    from studio.dataset.ingest import MIN_SIDE

    p = sub.add_parser("prepare", help="prepare a training dataset from photos (folder, files or zip)",
                       description="Validate photos, crop faces to 1024x1024, caption them with "
                                   "BLIP and write an imagefolder dataset with report.json.")
    p.add_argument("inputs", nargs="+", type=Path, help="folder(s), image file(s) or zip(s)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--trigger", default=DEFAULT_TRIGGER, help="rare trigger token (default TOK)")
    p.add_argument("--class-word", default=DEFAULT_CLASS_WORD, help="class word (default person)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="caption template with {trigger}, {class_word}, {caption}")
    p.add_argument("--framing", default=DEFAULT_FRAMING, choices=FRAMING_CHOICES)
    p.add_argument("--detector", default="auto", choices=DETECTOR_CHOICES,
                   help="face detector; auto = RetinaFace, else the offline Haar detector")
    p.add_argument("--captioner", help="captioning model: Hub id or folder (BLIP's default: env "
                                       "STUDIO_CAPTION_MODEL)")
    p.add_argument("--captioner-kind", default=DEFAULT_CAPTIONER, choices=list(CAPTIONERS),
                   help=f"which captioner runs the --captioner model (default {DEFAULT_CAPTIONER})")
    p.add_argument("--no-face", default="keep", choices=["keep", "drop"],
                   help="photos without a face: keep as a square of the whole photo, or drop")
    p.add_argument("--min-side", type=int, default=MIN_SIDE,
                   help=f"minimum short side in pixels (default {MIN_SIDE})")
    p.add_argument("--name", help="dataset name (default: the folder name)")
    p.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    p.set_defaults(func=_cmd_prepare)
    s = sub.add_parser("score-photos", help="check that a photo set shows one person",
                       description="Measure every photo's face against the set's identity (dlib "
                                   "face embeddings; same person is below 0.6) and name the "
                                   "photos of someone else. Exit 0: one person; 1: a photo to "
                                   "check; 2: bad input.")
    s.add_argument("target", type=Path, help="a folder (or zip) of photos, or a prepared dataset")
    s.set_defaults(func=_cmd_score_photos)


def _cmd_score_photos(args) -> int:
    from studio.dataset.score import score_photos

    report = score_photos(args.target)
    print(report.table())
    for r in report.rows:
        if r.sentence and "does not look like" in r.sentence:
            print(f"warning: {r.sentence}")
    for w in report.warnings:
        if "photo(s) do not look like the others" not in w:
            print(f"warning: {w}")
    print("one person." if report.one_person else "check the photos named above.")
    return 0 if report.one_person else 1


def _cmd_prepare(args) -> int:
    from studio.dataset.pipeline import prepare_dataset
    from studio.workspace import Workspace

    def show(frac: float, msg: str) -> None:
        if sys.stderr.isatty():
            print(f"\r[{frac:4.0%}] {msg[:70]:<70}", end="", file=sys.stderr, flush=True)

    try:
        result = prepare_dataset(
            args.inputs, args.out, trigger=args.trigger, class_word=args.class_word,
            framing=args.framing, detector=args.detector, captioner=args.captioner,
            captioner_kind=args.captioner_kind,
            progress=show, template=args.template, no_face=args.no_face,
            min_side=args.min_side, name=args.name, overwrite=args.force, workspace=Workspace())
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)
    for n in result.notices:
        print(n, file=sys.stderr)
    for o in result.outcomes:
        print(o.line())
    for w in result.report["set"]["warnings"] + result.report.get("lint", []):
        print(f"warning: {w}")
    rejected = sum(1 for o in result.outcomes if o.status != "accepted")
    print(f"{result.count} image(s) written to {result.dataset.path} ({rejected} not used); "
          f"report: {result.dataset.path / 'report.json'}")
    return 0 if result.count else 1
