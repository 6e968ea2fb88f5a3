"""Likeness during training: a :class:`~studio.train.callbacks.TrainCallbacks` that scores the
validation images of every validation and checkpoint (main process only).

* When a step's validation images are all written (``on_sample``), they are scored against the
  subject (:mod:`studio.identity.subject`); the prompts without the trigger are rendered with
  the LoRA at the same seeds (``RUN/bleed/step-N/``) and, once per run, without it
  (``RUN/bleed/base/``); one "likeness" event records the step's scores.
* A checkpoint whose step has no validation due renders the validation images first, so every
  checkpoint is scored.
* At the end of a finished run the best checkpoint is proposed (:mod:`studio.identity.runscore`):
  one log line, ``likeness.json``, the manifest and the model card.

A failure here is logged and never stops training (the trainer's callbacks are a fan-out that
catches). ``validation.likeness`` empty means on when at least 3 training photos look alike.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from studio.identity import scores as S
from studio.identity.subject import Subject, save_subject, subject_of
from studio.train.callbacks import TrainCallbacks
from studio.train.sampling import validation_prompts, write_samples

log = logging.getLogger(__name__)

MIN_FACES = 3  # look-alike training photos (an identity) that switch likeness on by itself


def bleed_prompts(cfg, class_word: str | None) -> list[str]:
    """The configured prompts without the trigger, else the class prompt."""
    return list(cfg.validation.bleed_prompts) or [
        cfg.data.class_prompt or f"a photo of a {class_word or 'person'}"]


def wanted(setting: bool | None, subject: Subject) -> tuple[bool, str | None]:
    """(score this run?, warning): ``validation.likeness`` against the subject found."""
    if subject.vector is None:
        return False, ("validation.likeness is on but no training photo shows a face that "
                       "embeds; likeness is not measured." if setting else None)
    if setting is None:
        return subject.group >= MIN_FACES, None
    return setting, None


@contextlib.contextmanager
def adapters_off(modules: list[Any]):
    """The LoRA layers of ``modules`` (peft adapters) switched off meanwhile."""
    for m in modules:
        m.disable_adapters()
    try:
        yield
    finally:
        for m in modules:
            m.enable_adapters()


def load_rgb(path) -> np.ndarray:
    """An image as the identity model sees it: RGB, at most the dataset crops' embedding size."""
    from PIL import Image

    from studio.dataset.identity import EMBED_SIDE

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((EMBED_SIDE, EMBED_SIDE), Image.Resampling.BILINEAR)
        return np.asarray(im)


class LikenessHook(TrainCallbacks):
    """Attach with :meth:`attach` once the trainer has built its models and data."""

    def __init__(self, trainer, subject: Subject, engine):
        self.t = trainer
        self.subject, self.engine = subject, engine
        cfg = trainer.cfg
        self.prompts = validation_prompts(cfg, trainer.instance_prompt)
        self.per_round = len(self.prompts) * cfg.validation.num_images
        self.bleed = bleed_prompts(cfg, trainer.ds.class_word)
        self.pending: dict[int, list[dict[str, Any]]] = {}
        self.scored: set[int] = set()
        self.total: int | None = None
        self.baseline: list[S.ImageScore] | None = None

    @classmethod
    def attach(cls, trainer) -> LikenessHook | None:
        """Score this run when wanted: the hook joins the trainer's callbacks (first, so its
        end-of-run lines come before the end event). Uses the trainer's cfg, folder, main, ds,
        instance_prompt, cb, acc, _pipeline, _lora_modules and _sample."""
        from studio.errors import first_line
        from studio.identity.engine import get_engine

        if not trainer.main or trainer.cfg.validation.likeness is False:
            return None
        try:
            engine = get_engine()
            subject = subject_of(trainer.ds.examples, engine, trainer.ds.hash,
                                 trainer.cfg.data.dataset)
        except Exception as exc:  # noqa: BLE001 - likeness is an extra: say why, train on
            trainer.cb.on_log("warning", f"Likeness is not measured: {first_line(exc)}")
            return None
        on, warning = wanted(trainer.cfg.validation.likeness, subject)
        if warning:
            trainer.cb.on_log("warning", warning)
        if not on:
            return None
        save_subject(trainer.folder, subject)
        hook = cls(trainer, subject, engine)
        trainer.cb.items.insert(0, hook)
        trainer.cb.on_log("info", f"Likeness: scoring against the face of {subject.group} of "
                                  f"the {subject.images} training photos (they look alike).")
        return hook

    # ---- callbacks -----------------------------------------------------------------------
    def on_start(self, info):
        self.total = info.get("total_steps")

    def on_sample(self, info):
        step = int(info["step"])
        got = self.pending.setdefault(step, [])
        got.append(info)
        if len(got) >= self.per_round:
            del self.pending[step]
            self._safely(step, lambda: self.score(step, got))

    def on_checkpoint(self, info):
        step = int(info["step"])
        v, stop = self.t.cfg.validation, self.t.stop
        due = (v.every_n_steps and step % v.every_n_steps == 0) or (
            v.at_end and self.total is not None and step >= self.total)
        if step not in self.scored and not due and not (stop is not None and stop.is_set()):
            self._safely(step, lambda: self.t._sample(step))  # a cancel does not wait for it

    def _safely(self, step: int, work) -> None:
        """Likeness never stops training: a failure is one warning."""
        from studio.errors import first_line

        try:
            work()
        except Exception as exc:  # noqa: BLE001
            log.exception("likeness at step %s failed", step)
            self.t.cb.on_log("warning", f"Likeness was not measured at step {step}: "
                                        f"{first_line(exc)}")

    def on_end(self, info):
        if info.get("status") != "finished":
            return
        from studio.identity.runscore import record

        result = record(self.t.folder)
        level = "warning" if result.proposal.step is None else "info"
        self.t.cb.on_log(level, f"Best checkpoint: {result.proposal.reason}")

    # ---- scoring -------------------------------------------------------------------------
    def _score_files(self, paths) -> list[S.ImageScore]:
        return [S.score_image(self.engine, load_rgb(p), self.subject.vector) for p in paths]

    def _render(self, step: int | None) -> list[S.ImageScore]:
        """The prompts without the trigger at the validation seeds: with the LoRA at ``step``,
        or without it (None; reused when the run already has them)."""
        t = self.t
        folder = t.folder
        out = folder.bleed_dir(step)
        if step is None and out.is_dir():
            have = sorted(out.glob("*.png"))
            if len(have) == len(self.bleed) * t.cfg.validation.num_images:
                return self._score_files(have)
        modules = list(t._lora_modules().values())
        ctx = adapters_off(modules) if step is None else contextlib.nullcontext()
        with ctx:
            recs = write_samples(t._pipeline(), folder, step or 0, self.bleed, t.cfg,
                                 t.acc.autocast, lambda r: None, out_dir=out)
        return self._score_files(folder.path / r["path"] for r in recs)

    def score(self, step: int, samples: list[dict[str, Any]]) -> None:
        folder = self.t.folder
        images = self._score_files(folder.path / s["path"] for s in samples)
        if self.baseline is None:
            self.baseline = self._render(None)
        bleed = self._render(step)
        result = S.step_score(step, images, bleed, self.baseline, tuple(self.bleed))
        self.scored.add(step)
        self.t.cb.on_likeness(result.to_event())
