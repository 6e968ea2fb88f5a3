"""A run's likeness: the scores of its steps (its "likeness" events), the proposed best
checkpoint, and where they are written.

:func:`record` writes ``likeness.json`` (``RunFolder.likeness_path``) and, for a run with a
manifest, the manifest's "likeness" entry and the model card's Likeness section (through
:mod:`studio.runs.card`). :func:`use_best` makes the proposed checkpoint the run's LoRA with
:func:`studio.runs.export.export_checkpoint`, the code that exports any checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
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
        return {"time": round(time.time(), 3), "engine": "dlib", "max_bleed": self.max_bleed, "bleed_prompts": prompts,
                "checkpoints": [r.to_event() for r in self.rows if r.step in self.checkpoints],
                "steps": [r.to_event() for r in self.rows],
                "proposed": self.proposal.step, "reason": self.proposal.reason}


def saved(run: RunFolder) -> dict[str, Any]:
    """``likeness.json`` ({} when missing or unreadable)."""
    try:
        data = json.loads(run.likeness_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def step_scores(run: RunFolder) -> list[StepScore]:
    """One row per scored step: the run's "likeness" events (the last one of a step), and the
    rows of likeness.json (``python -m studio score``) where they are newer."""
    by_step: dict[int, tuple[float, StepScore]] = {}
    for e in run.events():
        if e.get("type") == "likeness" and isinstance(e.get("step"), int):
            by_step[e["step"]] = (float(e.get("time") or 0), StepScore.from_event(e))
    data = saved(run)
    when = float(data.get("time") or 0)
    for r in data.get("steps") or []:
        if isinstance(r, dict) and isinstance(r.get("step"), int) and \
                by_step.get(r["step"], (0.0, None))[0] <= when:
            by_step[r["step"]] = (when, StepScore.from_event(r))
    return [by_step[s][1] for s in sorted(by_step)]


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


def card_lines(run: RunFolder, step: int | None = None) -> list[str]:
    """The Likeness section of a card for the run's LoRA (``step`` None) or checkpoint
    ``step``: its scores, the proposal and how they were measured ([] when not scored)."""
    from studio.identity.scores import card_section

    manifest = run.manifest()
    entry = saved(run) or manifest.get("likeness") or {}
    return card_section(entry, manifest.get("steps") if step is None else step)
