"""How fast this machine trains, from what earlier runs in the workspace measured.

Every ``step`` event records the run's average speed so far (``steps_per_s``). A run's
seconds per step is the median of those after the first step (which includes warm-up). The
speed for a planned training is that of the newest run at the same resolution and batch size;
without one, the newest run's speed scaled by the number of pixels per step (resolution squared
times batch size), which is how a UNet step's cost grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from studio.runs.folder import RunError, RunFolder


@dataclass(frozen=True)
class Speed:
    """Seconds per step for a planned training, and where it comes from."""

    seconds_per_step: float
    run: str                  # the run that measured it
    resolution: int | None    # that run's resolution and batch size (None: unknown)
    batch_size: int | None
    scaled: bool              # scaled from another resolution or batch size


def run_seconds_per_step(run: RunFolder) -> float | None:
    """The median seconds per step a run measured (None with fewer than 3 steps)."""
    rates = []
    for e in run.events():
        try:
            sps = float(e.get("steps_per_s") or 0) if e.get("type") == "step" else 0.0
        except (TypeError, ValueError):
            sps = 0.0
        if sps > 0:
            rates.append(1.0 / sps)
    if len(rates) < 3:
        return None
    rates = sorted(rates[1:])
    return rates[len(rates) // 2]


def _shape(run: RunFolder) -> tuple[int | None, int | None]:
    try:
        cfg = run.config()
    except RunError:
        return None, None
    return cfg.data.resolution, cfg.train.batch_size


def machine_speed(runs_dir: str | Path, resolution: int, batch_size: int = 1) -> Speed | None:
    """The speed a training at ``resolution`` px with ``batch_size`` images per step can expect
    on this machine (None when no run has measured one)."""
    root = Path(runs_dir)
    runs = [RunFolder(p) for p in (root.iterdir() if root.is_dir() else [])]
    runs = sorted((r for r in runs if r.events_path.is_file()),
                  key=lambda r: r.events_path.stat().st_mtime, reverse=True)
    fallback: Speed | None = None
    for run in runs:
        sps = run_seconds_per_step(run)
        if sps is None:
            continue
        res, batch = _shape(run)
        if res is None or (res == resolution and batch == batch_size):
            return Speed(sps, run.name, res, batch, False)
        if fallback is None:
            factor = (resolution / res) ** 2 * (batch_size / (batch or 1))
            fallback = Speed(sps * factor, run.name, res, batch, True)
    return fallback
