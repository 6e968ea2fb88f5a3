"""The Train tab's likeness view: likeness and identity bleed per step beside the loss, the
proposed best checkpoint with "Use best checkpoint", scoring on demand, and each compared
image's score. The numbers come from studio.identity (the run's likeness events and
likeness.json); this module only lays them out.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from studio.errors import StudioError, first_line
from studio.identity.runscore import run_likeness, use_best
from studio.identity.scores import NO_FACE, StepScore
from studio.runs.folder import RunFolder

LIKENESS_COLUMNS = ["step", "score", "series"]
NOT_MEASURED = ("Likeness is not measured for this run (fewer than 3 training photos show one "
                "person, or validation.likeness is off); **Score checkpoints** measures it.")


def likeness_frame(rows: list[StepScore]) -> pd.DataFrame:
    """Likeness and bleed per step (steps without a face have no point, never a 0)."""
    out = [{"step": r.step, "score": r.likeness, "series": "likeness"} for r in rows
           if r.likeness is not None]
    out += [{"step": r.step, "score": r.bleed, "series": "bleed"} for r in rows
            if r.bleed is not None]
    return pd.DataFrame(out, columns=LIKENESS_COLUMNS)


def _latest(r: StepScore) -> str:
    if r.likeness is None:
        return f"step {r.step}: {NO_FACE} ({r.faces}/{r.images} images)"
    bleed = f", bleed {r.bleed:.2f}" if r.bleed is not None else ""
    return f"step {r.step}: likeness {r.likeness:.2f}, faces {r.faces}/{r.images}{bleed}"


def best_markdown(run_dir: str | Path) -> tuple[str, list[StepScore]]:
    """(what the proposal box says, the rows) for a run."""
    text, rows, _ = _best(run_dir)
    return text, rows


def _best(run_dir: str | Path) -> tuple[str, list[StepScore], bool]:
    """(proposal text, rows, whether a checkpoint is proposed) for a run."""
    result = run_likeness(RunFolder(run_dir))
    if not result.rows:
        return NOT_MEASURED, [], False
    return (f"**Best checkpoint:** {result.proposal.reason}\n\nLatest: "
            f"{_latest(result.rows[-1])}"), result.rows, result.proposal.step is not None


# ---- each compared image's score ----------------------------------------------------------------
_SCORES: dict[tuple[str, int], str] = {}
_LOCK = threading.Lock()


def cell_scores(run_dir: str | Path, paths: list[Path]) -> dict[Path, str]:
    """{image: " · likeness 0.71" or " · no face"} against the run's subject ({} when the run
    has none yet); each file is embedded once per process."""
    from studio.identity.engine import get_engine
    from studio.identity.hook import load_rgb
    from studio.identity.scores import score_image
    from studio.identity.subject import load_subject

    subject = load_subject(RunFolder(run_dir))
    if subject is None or subject.vector is None:
        return {}
    out = {}
    for p in paths:
        key = (str(p), p.stat().st_mtime_ns)
        with _LOCK:
            if key not in _SCORES:
                _SCORES[key] = score_image(get_engine(), load_rgb(p), subject.vector).label()
        out[p] = f" · {_SCORES[key]}"
    return out


# ---- layout and events ----------------------------------------------------------------------------
def build(c: dict) -> None:
    """The likeness plot, the proposal and its buttons (called inside the live column)."""
    c["likeness_plot"] = gr.LinePlot(  # None, not an empty frame: Gradio 6 then draws no line
        value=None, x="step", y="score", color="series",
        label="Likeness and identity bleed", elem_id="train-likeness", height=220,
        color_map={"likeness": "#2ca25f", "bleed": "#de2d26"})
    c["best"] = gr.Markdown(elem_id="train-best")
    with gr.Row():
        # enabled by the live view: Use best once a checkpoint is proposed, Score once a run
        # with checkpoints is selected
        c["use_best"] = gr.Button("Use best checkpoint", elem_id="train-use-best", size="sm",
                                  variant="primary", interactive=False)
        c["score"] = gr.Button("Score checkpoints", elem_id="train-score", size="sm",
                               interactive=False)
    c["best_status"] = gr.Markdown(elem_id="train-best-status")
    c["likeness_seen"] = gr.State(None)


def wire(ctx, c: dict) -> None:
    outs = [c["likeness_plot"], c["best"], c["likeness_seen"], c["use_best"], c["score"]]
    c["timer"].tick(tick, [c["runs"], c["likeness_seen"]], outs, show_progress="hidden",
                    queue=False)
    c["runs"].change(tick, [c["runs"], c["likeness_seen"]], outs, show_progress="hidden")
    c["use_best"].click(on_use_best, c["runs"], c["best_status"])

    def on_score(run_dir, progress=gr.Progress()):  # noqa: B008
        return score_checkpoints(ctx, run_dir, progress)

    c["score"].click(on_score, c["runs"], c["best_status"], concurrency_limit=1,
                     concurrency_id="gpu")


def tick(run_dir: str | None, seen: Any) -> tuple:
    """The plot, the proposal and the two buttons' state of the selected run; gr.skip() while
    nothing changed."""
    off = gr.update(interactive=False)
    if not run_dir:
        return gr.skip(), "", None, off, off
    try:
        text, rows, proposed = _best(run_dir)
        has_checkpoints = bool(RunFolder(run_dir).checkpoints())
    except StudioError as exc:
        return gr.skip(), f"⚠️ {first_line(exc)}", None, off, off
    sig = [run_dir, text, [r.to_event() for r in rows], has_checkpoints]
    if sig == seen:
        return gr.skip(), gr.skip(), seen, gr.skip(), gr.skip()
    return ((likeness_frame(rows) if rows else None), text, sig,
            gr.update(interactive=proposed), gr.update(interactive=has_checkpoints))


def on_use_best(run_dir: str | None) -> str:
    if not run_dir:
        return "⚠️ Pick a run first."
    try:
        step, reason = use_best(run_dir)
    except StudioError as exc:
        return f"⚠️ {first_line(exc)}"
    return f"✅ Checkpoint {step} is now the run's LoRA ({reason})"


def score_checkpoints(ctx, run_dir: str | None, progress=None) -> str:
    """Score every checkpoint of the run (images generated only where missing)."""
    from studio.identity.rescore import score_run

    if not run_dir:
        return "⚠️ Pick a run first."
    try:
        result = score_run(run_dir, ctx.generation_service().generator(),
                           progress=(lambda what: progress(0.5, desc=what)) if progress else None)
    except StudioError as exc:
        return f"⚠️ {first_line(exc)}"
    return f"Scored {len(result.checkpoints)} checkpoints. {result.proposal.reason}"
