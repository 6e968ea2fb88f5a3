"""What the Train tab shows, as pure functions of the workspace, the job service and a
:class:`~studio.runs.monitor.RunView` (tested without a browser)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from studio.dataset.store import list_datasets
from studio.runs.manifest import lora_check_text
from studio.runs.monitor import RunView, format_duration, get_monitor, measured_seconds_per_step
from studio.ui.context import AppContext

STATE_ICONS = {"queued": "⏳", "running": "🏃", "finished": "✅", "failed": "❌",
               "cancelled": "⏹️", "interrupted": "⚠️", "unknown": "❔"}
LOSS_COLUMNS = ["step", "loss", "series"]


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


def loss_frame(view: RunView) -> pd.DataFrame:
    rows = [{"step": p.step, "loss": p.loss, "series": "raw"} for p in view.loss]
    rows += [{"step": p.step, "loss": s, "series": "smoothed"}
             for p, s in zip(view.loss, view.smoothed, strict=True)]
    return pd.DataFrame(rows, columns=LOSS_COLUMNS)


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
        lines.append(str(view.message))
    if view.status == "cancelled":
        lines.append("Resume continues from the last checkpoint.")
    for w in view.warnings[-2:]:
        lines.append(f"⚠️ {w}")
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
    """How long a training with ``cfg`` (a TrainConfig) takes, from the speed a finished run on
    this machine measured."""
    steps = cfg.train.max_train_steps
    if not steps:
        return "Estimated time: unknown (the length is set in epochs)."
    measured = measured_seconds_per_step(ctx.workspace.runs_dir, cfg.data.resolution,
                                         cfg.train.batch_size)
    if measured is None:
        return (f"**{steps} steps** at {cfg.data.resolution} px. Estimated time: unknown until "
                "a first run on this machine has measured its speed.")
    sps, run = measured
    return (f"**{steps} steps** at {cfg.data.resolution} px: about "
            f"**{format_duration(steps * sps)}** of training ({sps:.2f} s/step measured by run "
            f"{run}; validation images and model loading come on top).")
