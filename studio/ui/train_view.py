"""What the Train tab shows, as pure functions of the workspace, the job service and a
:class:`~studio.runs.monitor.RunView` (tested without a browser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from studio.dataset.store import list_datasets
from studio.runs.manifest import lora_check_text
from studio.runs.monitor import RunView, format_duration, get_monitor
from studio.runs.speed import machine_speed
from studio.ui.context import AppContext

STATE_ICONS = {"queued": "⏳", "running": "🏃", "finished": "✅", "failed": "❌",
               "cancelled": "⏹️", "interrupted": "⚠️", "unknown": "❔"}
LOSS_COLUMNS = ["step", "loss", "series"]
# The loss chart's step axis spans at least this many steps, so its ticks are whole steps.
MIN_STEP_AXIS = 30
# The trainer's CLI wording for a resume, and what a browser user does instead.
CLI_RESUME = "resume with --resume latest"
UI_RESUME = "press Resume to continue"


def dataset_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, folder) of every dataset of the workspace, newest first."""
    out = []
    for d in list_datasets(ctx.workspace):
        count = (d.get("info") or {}).get("count")
        out.append((d["name"] + (f" ({count} images)" if count else ""), d["path"]))
    return out


def run_choices(ctx: AppContext, service: Any) -> list[tuple[str, str]]:
    """(icon name (state), run folder) of every run of the workspace, any state."""
    jobs = {j.run_dir: j for j in reversed(service.list())}
    out = []
    for r in ctx.workspace.list_runs():
        path = str(Path(r["path"]).resolve())
        job = jobs.get(path)
        state = job.state if job is not None else get_monitor(path).poll(log_lines=0).status
        out.append((f"{STATE_ICONS.get(state, '')} {r['name']} ({state})", path))
    return out


def preferred_run(choices: list[tuple[str, str]], service: Any) -> str:
    """The run to show when none is selected: an active job's run, else the newest."""
    active = service.list(["running"]) or service.list(["queued"])
    paths = [p for _, p in choices]
    for job in active:
        if job.run_dir in paths:
            return job.run_dir
    return paths[0]


def loss_frame(view: RunView | None = None) -> pd.DataFrame:
    """The loss chart's data: a "raw" and a "smoothed" row per step, after one empty (NaN) row of
    each series. The chart builds its colours and legend from the series in its first data
    (Gradio's plot does not rebuild them when only the data changes), so both series are
    there from the start, and the columns are typed (an untyped empty frame makes the axes
    categories)."""
    points = view.loss if view is not None else []
    smoothed = list(view.smoothed) if view is not None else []
    return pd.DataFrame({
        "step": pd.Series([0, 0] + [p.step for p in points] * 2, dtype="int64"),
        "loss": pd.Series([float("nan")] * 2 + [p.loss for p in points] + smoothed,
                          dtype="float64"),
        "series": pd.Series(["raw", "smoothed"] + ["raw"] * len(points)
                            + ["smoothed"] * len(smoothed), dtype=str)})


def loss_axis(view: RunView) -> list[int]:
    """[0, last step shown]: the whole run when its length is known, never fewer than
    MIN_STEP_AXIS steps (so the chart never ticks at fractional steps)."""
    last = max([view.total_steps or 0, view.loss[-1].step if view.loss else 0, MIN_STEP_AXIS])
    return [0, int(last)]


def ui_message(text: str) -> str:
    """A trainer message as the browser shows it (the Resume button, not the CLI flag)."""
    return text.replace(CLI_RESUME, UI_RESUME)


def status_markdown(view: RunView, queue_pos: int | None = None) -> str:
    icon = STATE_ICONS.get(view.status, "")
    total = view.total_steps or "?"
    parts = [f"{icon} **{view.status}**", f"step **{view.step} / {total}**"]
    if view.steps_per_s:
        parts.append(f"{view.steps_per_s:.2f} it/s")
    if view.eta_s is not None and view.status == "running":
        parts.append(f"ETA {format_duration(view.eta_s)}")
    if view.lr is not None:
        parts.append(f"lr {view.lr:.2e}")
    if view.mem_gb is not None:
        parts.append(f"GPU memory {view.mem_gb:.1f} GB")
    if queue_pos:
        parts.append(f"position {queue_pos} in the queue")
    ck = [c["step"] for c in view.checkpoints if c["complete"]]
    lines = [" · ".join(parts),
             f"checkpoints: {', '.join(map(str, ck)) if ck else 'none yet'}"]
    if view.message and view.status in ("queued", "finished", "cancelled"):
        lines.append(ui_message(str(view.message)))
    if view.status == "cancelled":
        lines.append("Resume continues from the last checkpoint.")
    for w in list(dict.fromkeys(view.warnings))[-2:]:  # a resumed run repeats its warnings
        lines.append(f"⚠️ {ui_message(w)}")
    if view.status == "finished" and (check := lora_check_text(view.run_dir)):
        lines.append("LoRA loader check:\n" + check)
    return "\n\n".join(lines)


def samples_value(view: RunView) -> list[tuple[str, str]]:
    """(image path, caption) of the run's validation samples, newest first."""
    out = []
    for step in sorted(view.samples, reverse=True):
        for s in view.samples[step]:
            p = view.run_dir / str(s["path"])
            if p.is_file():
                out.append((str(p), f"step {step} · seed {s.get('seed')} · "
                                    f"{str(s.get('prompt', ''))[:60]}"))
    return out


def estimate_markdown(ctx: AppContext, cfg) -> str:
    """How long a training with ``cfg`` (a TrainConfig) takes, from the speed runs on this
    machine measured (same resolution and batch size, else scaled by pixels per step)."""
    steps, res = cfg.train.max_train_steps, cfg.data.resolution
    if not steps:
        return "Estimated time: unknown (the length is set in epochs)."
    speed = machine_speed(ctx.workspace.runs_dir, res, cfg.train.batch_size)
    if speed is None:
        return (f"**{steps} steps** at {res} px. Estimated time: unknown until a first run on "
                "this machine has measured its speed.")
    how = (f"scaled by pixels from run {speed.run} at {speed.resolution} px, batch "
           f"{speed.batch_size}" if speed.scaled else f"measured by run {speed.run}")
    return (f"**{steps} steps** at {res} px: about "
            f"**{format_duration(steps * speed.seconds_per_step)}** of training "
            f"({speed.seconds_per_step:.2f} s/step, {how}; validation images and model loading "
            "come on top).")
