"""Score a run's checkpoints after training (``python -m studio score``).

Each checkpoint's images come from the checkpoint comparison (:mod:`studio.train.compare`):
its validation samples when the trainer made them, else generated once at the same seeds and
cached in the run. The images of the prompts without the trigger are the trainer's own
(``RUN/bleed/``) when their prompt and seed match, else generated the same way; the baseline
without the LoRA likewise. Nothing is generated when every image is there (the generator's pipelines load lazily).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.identity import scores as S
from studio.identity.engine import IdentityEngine, get_engine
from studio.identity.hook import bleed_prompts, load_rgb
from studio.identity.runscore import RunLikeness, record
from studio.identity.subject import run_subject
from studio.runs.folder import RunError, RunFolder
from studio.train.compare import Cell, base_cells, compare_grid, compare_settings, validation_pairs

log = logging.getLogger(__name__)


def _png_key(path: Path) -> tuple[str, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
        return str(text["prompt"]), int(text["seed"])
    except (OSError, KeyError, ValueError):
        return None


def trainer_bleed(run: RunFolder, step: int | None, pairs: list[tuple[str, int]]
                  ) -> list[Path] | None:
    """The trainer's bleed images of ``step`` (None: the baseline) for exactly ``pairs``."""
    folder = run.bleed_dir(step)
    found = {k: p for p in sorted(folder.glob("*.png")) if (k := _png_key(p)) is not None} \
        if folder.is_dir() else {}
    paths = [found.get(pair) for pair in pairs]
    return None if any(p is None for p in paths) else paths  # type: ignore[return-value]


def _paths(cells: list[Cell]) -> list[Path]:
    return [c.path for c in cells]


def score_run(run_dir: str | Path, generator: Any, steps: list[int] | None = None,
              prompts: list[str] | None = None, bleed: list[str] | None = None,
              max_bleed: float = S.MAX_BLEED, engine: IdentityEngine | None = None,
              progress: Callable[[str], None] | None = None) -> RunLikeness:
    """Score the checkpoints (``steps``: those only) and record the result (likeness.json, the
    manifest and the card); ``prompts`` name the subject (default: the run's validation
    prompts), ``bleed`` leave the trigger out (default: the run's bleed prompts)."""
    run = RunFolder(run_dir)
    engine = engine or get_engine()
    cfg = run.config()
    for s in steps or []:
        run.checkpoint(s)  # a RunError naming the checkpoints there are
    subject = run_subject(run, engine).vector
    if subject is None:
        raise RunError(f"The training photos of the run {run.name} show no face the identity "
                       "model can embed, so there is nothing to compare its images with.")
    settings = compare_settings(run.path)
    v = cfg.validation
    pairs = ([(p, v.seed + i) for p in prompts for i in range(v.num_images)] if prompts
             else validation_pairs(run.path))
    seeds = sorted({seed for _, seed in pairs})
    bleed = bleed or bleed_prompts(cfg, run.trigger()[1])
    bleed_pairs = [(p, seed) for p in bleed for seed in seeds]

    def scored(paths) -> list[S.ImageScore]:
        return [S.score_image(engine, load_rgb(p), subject) for p in paths]

    base = trainer_bleed(run, None, bleed_pairs) or _paths(
        base_cells(run.path, generator, settings, bleed_pairs))
    base_scores = scored(base)
    rows = []
    for row in compare_grid(run.path, generator, settings, pairs, steps=steps):
        step = row[0].step
        if progress:
            progress(f"checkpoint {step}")
        b = trainer_bleed(run, step, bleed_pairs) or _paths(
            compare_grid(run.path, generator, settings, bleed_pairs, steps=[step])[0])
        rows.append(S.step_score(step, scored(_paths(row)), scored(b), base_scores,
                                 tuple(bleed)))
    return record(run, _merge(run, rows), max_bleed)


def _merge(run: RunFolder, rows: list[S.StepScore]) -> list[S.StepScore]:
    """The new rows over the run's recorded ones (other checkpoints keep their scores)."""
    from studio.identity.runscore import step_scores

    by_step = {r.step: r for r in step_scores(run)}  # the trainer's and earlier scores
    by_step.update({r.step: r for r in rows})
    return [by_step[s] for s in sorted(by_step)]
