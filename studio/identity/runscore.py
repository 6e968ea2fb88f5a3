"""A run's likeness: the scores of its steps (its "likeness" events), the proposed best
checkpoint, and where they are written.

:func:`record` writes ``likeness.json`` (``RunFolder.likeness_path``) and, for a run with a
manifest, the manifest's "likeness" entry and the model card's Likeness section (through
:mod:`studio.runs.card`). :func:`use_best` makes the proposed checkpoint the run's LoRA with
:func:`studio.runs.export.export_checkpoint`, the code that exports any checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from studio.fsutil import atomic_write_json
from studio.identity.scores import MAX_BLEED, Proposal, StepScore, choose_best
from studio.runs.folder import RunError, RunFolder

log = logging.getLogger(__name__)


@dataclass
class RunLikeness:
    rows: list[StepScore]
    proposal: Proposal
    max_bleed: float
    checkpoints: list[int]

    def row(self, step: int | None) -> StepScore | None:
        return next((r for r in self.rows if r.step == step), None)

    def entry(self) -> dict[str, Any]:
        """The manifest's and likeness.json's "likeness" entry."""
        prompts = next((list(r.bleed_prompts) for r in reversed(self.rows) if r.bleed_prompts),
                       [])
        return {"engine": "dlib", "max_bleed": self.max_bleed, "bleed_prompts": prompts,
                "checkpoints": [r.to_event() for r in self.rows if r.step in self.checkpoints],
                "steps": [r.to_event() for r in self.rows],
                "proposed": self.proposal.step, "reason": self.proposal.reason}


def step_scores(run: RunFolder) -> list[StepScore]:
    """One row per scored step, from the run's "likeness" events (the last one of a step)."""
    by_step: dict[int, StepScore] = {}
    for e in run.events():
        if e.get("type") == "likeness" and isinstance(e.get("step"), int):
            by_step[e["step"]] = StepScore.from_event(e)
    return [by_step[s] for s in sorted(by_step)]


def run_likeness(run: RunFolder, rows: list[StepScore] | None = None,
                 max_bleed: float = MAX_BLEED) -> RunLikeness:
    """The run's rows (its events unless given) and the proposal among its checkpoints."""
    rows = step_scores(run) if rows is None else rows
    steps = [c.step for c in run.checkpoints()]
    return RunLikeness(rows, choose_best(rows, steps, max_bleed), max_bleed, steps)


def record(run: RunFolder, rows: list[StepScore] | None = None,
           max_bleed: float = MAX_BLEED) -> RunLikeness:
    """Compute the proposal and write it with the scores: likeness.json; the manifest and the
    model card when the run has a manifest."""
    result = run_likeness(run, rows, max_bleed)
    entry = result.entry()
    atomic_write_json(run.likeness_path, entry)
    manifest = run.manifest()
    if manifest:
        manifest["likeness"] = entry
        atomic_write_json(run.manifest_path, manifest)
        _write_card(run, manifest)
    return result


def _write_card(run: RunFolder, manifest: dict[str, Any]) -> None:
    from studio.runs.card import write_model_card

    try:
        cfg = run.config()
    except RunError as exc:
        log.warning("run %s: the model card keeps its old likeness (%s)", run.name, exc)
        return
    steps = manifest.get("steps")
    samples = run.samples(steps if isinstance(steps, int) else None)
    write_model_card(run.path, cfg, manifest, [s.card_entry() for s in samples])


class LikenessError(RunError):
    """No checkpoint can be proposed (one sentence)."""


def use_best(run_dir, max_bleed: float = MAX_BLEED) -> tuple[int, str]:
    """Export the proposed checkpoint as the run's LoRA; (its step, the one-line reason)."""
    from studio.runs.export import export_checkpoint

    run = RunFolder(run_dir)
    result = run_likeness(run, max_bleed=max_bleed)
    if result.proposal.step is None:
        raise LikenessError(result.proposal.reason)
    export_checkpoint(run.path, result.proposal.step)
    record(run, result.rows, max_bleed)
    return result.proposal.step, result.proposal.reason
