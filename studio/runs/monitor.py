"""Read a run folder as it grows: events, checkpoints, samples, log tail.

Works for any run folder that follows the run-folder contract, whether the app's runner, the
CLI or another machine wrote it. ``events.jsonl`` is read incrementally from a byte offset; a
torn last line (the trainer was killed mid-write, or is writing right now) is kept back until
its newline arrives.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.fsutil import parse_json_lines
from studio.jobs.process import process_alive
from studio.runs.folder import RunError, RunFolder

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 32 * 1024


@dataclass
class LossPoint:
    step: int
    loss: float
    lr: float | None
    time: float


@dataclass
class RunView:
    """What the live view shows for one run at one moment."""

    run_dir: Path
    name: str
    status: str  # queued | running | finished | failed | cancelled | interrupted | unknown
    step: int = 0
    total_steps: int | None = None
    loss: list[LossPoint] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    lr: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    mem_gb: float | None = None
    epoch: float | None = None
    samples: dict[int, list[dict]] = field(default_factory=dict)
    checkpoints: list[dict] = field(default_factory=list)
    error: str | None = None
    message: str | None = None
    warnings: list[str] = field(default_factory=list)
    log_tail: str = ""
    started: float | None = None
    ended: float | None = None
    resumed_from: str | None = None
    pid: int | None = None

    @property
    def progress(self) -> float:
        if not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)


def ema(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style smoothing)."""
    out: list[float] = []
    acc, norm = 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(out[-1] if out else v)
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


class RunMonitor:
    """Incremental reader of one run folder; call :meth:`poll` as often as you like."""

    def __init__(self, run_dir: str | Path, smoothing: float = 0.9):
        self.run_dir = Path(run_dir)
        self.run = RunFolder(run_dir)
        self.smoothing = smoothing
        self._offset = 0
        self._pending = b""
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._offset = 0
        self._pending = b""
        self._points: dict[int, LossPoint] = {}
        self._samples: dict[int, list[dict]] = {}
        self._ckpt_events: dict[int, str] = {}
        self._last_step: dict[str, Any] = {}
        self._start: dict[str, Any] | None = None
        self._first_start_time: float | None = None
        self._end: dict[str, Any] | None = None
        self._error: str | None = None
        self._warnings: list[str] = []
        self._size_seen = 0

    # ---- events ---------------------------------------------------------------------------
    def _read_new(self) -> list[dict]:
        path = self.run.events_path
        try:
            size = path.stat().st_size
        except OSError:
            if self._offset:
                self._reset()
            return []
        if size < self._offset:  # replaced or truncated: start over
            self._reset()
        if size == self._offset:
            return []
        with open(path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        self._offset += len(data)
        data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()  # b"" when the data ended with a newline
        return parse_json_lines(lines)

    def _apply(self, ev: dict) -> None:
        kind = ev.get("type")
        step = _int(ev.get("step"))
        if kind == "start":
            self._start = ev
            self._end = None
            self._error = None
            if self._first_start_time is None:
                self._first_start_time = _float(ev.get("time"))
            # A resumed attempt restarts at its checkpoint's step: points after it are superseded.
            s0 = step or 0
            for s in [s for s in self._points if s > s0]:
                del self._points[s]
            for s in [s for s in self._samples if s > s0]:
                del self._samples[s]
            if s0 == 0:
                self._last_step = {}
        elif kind == "step" and step is not None:
            loss = _float(ev.get("loss"))
            if loss is not None:
                self._points[step] = LossPoint(step, loss, _float(ev.get("lr")),
                                               _float(ev.get("time")) or 0.0)
            self._last_step = ev
        elif kind == "sample" and step is not None and ev.get("path"):
            lst = self._samples.setdefault(step, [])
            if not any(s.get("path") == ev["path"] for s in lst):
                lst.append(ev)
        elif kind == "checkpoint" and step is not None and ev.get("path"):
            self._ckpt_events[step] = str(ev["path"])
        elif kind == "error" and ev.get("message"):
            self._error = str(ev["message"]).strip().splitlines()[0]
        elif kind == "log" and ev.get("level") == "warning" and ev.get("message"):
            self._warnings = (self._warnings + [str(ev["message"])])[-5:]
        elif kind == "end":
            self._end = ev

    # ---- public ---------------------------------------------------------------------------
    def poll(self, job: Any | None = None, log_lines: int = 40) -> RunView:
        """Read what is new and return the current view. ``job`` (a runner Job) gives the
        authoritative state of app-started runs; without one the state comes from the events."""
        with self._lock:
            for ev in self._read_new():
                self._apply(ev)
            return self._view(job, log_lines)

    def _view(self, job: Any | None, log_lines: int) -> RunView:
        pts = [self._points[s] for s in sorted(self._points)]
        last = self._last_step
        start = self._start or {}
        step = _int(last.get("step"))
        if step is None:
            step = _int(start.get("step")) or 0
        total = _int(last.get("total_steps")) or _int(start.get("total_steps"))
        v = RunView(run_dir=self.run_dir, name=self.run_dir.name, status="unknown", step=step,
                    total_steps=total, loss=pts,
                    smoothed=ema([p.loss for p in pts], self.smoothing),
                    lr=_float(last.get("lr")), steps_per_s=_float(last.get("steps_per_s")),
                    eta_s=_float(last.get("eta_s")), mem_gb=_float(last.get("mem_gb")),
                    epoch=_float(last.get("epoch")),
                    samples={k: list(vs) for k, vs in sorted(self._samples.items())},
                    checkpoints=self.run.checkpoint_dirs(), error=self._error,
                    warnings=list(self._warnings), log_tail=self.log_tail(log_lines),
                    started=self._first_start_time, resumed_from=start.get("resumed_from"),
                    pid=_int(start.get("pid")))
        if self._end is not None:
            v.status = str(self._end.get("status") or "finished")
            v.message = self._end.get("message")
            v.ended = _float(self._end.get("time"))
            if self._end.get("step") is not None:
                v.step = _int(self._end.get("step")) or v.step
        elif self._start is not None:
            v.status = "running" if process_alive(v.pid) else "interrupted"
        if job is not None:
            v.status = job.state
            if job.state == "queued":
                v.message = "Waiting for the GPU: another training runs first."
            v.ended = job.ended or v.ended
        error = job.error if job is not None and job.error else None
        if error is None and v.status in ("failed", "interrupted"):
            error = self._error
        if v.status == "interrupted" and not error:
            error = ("The training process stopped without an end event (killed, or the machine "
                     "restarted); resume continues from the last checkpoint.")
        v.error = error
        if v.status in ("finished", "cancelled", "failed", "interrupted"):
            v.eta_s = None
        return v

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.run.log_path, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - LOG_TAIL_BYTES))
                data = fh.read().decode("utf-8", "replace")
        except OSError:
            return ""
        out = [ln.split("\r")[-1] for ln in data.rstrip("\n").split("\n")]
        if size > LOG_TAIL_BYTES and out:
            out = out[1:]  # the first line is probably cut
        return "\n".join(out[-lines:])


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


_MONITORS: dict[str, RunMonitor] = {}
_MON_LOCK = threading.Lock()


def get_monitor(run_dir: str | Path) -> RunMonitor:
    """One shared monitor per run folder in this process (the UI polls it from every tab)."""
    key = str(Path(run_dir).resolve())
    with _MON_LOCK:
        if key not in _MONITORS:
            _MONITORS[key] = RunMonitor(run_dir)
        return _MONITORS[key]


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def measured_seconds_per_step(runs_dir: str | Path, resolution: int | None = None,
                              batch_size: int | None = None, exclude: str | Path | None = None
                              ) -> tuple[float, str] | None:
    """Median seconds per step of the most recent run on this machine (matching resolution and
    batch size when the run's config can be read), and that run's name; None when there is none."""
    runs = []
    skip = RunFolder(exclude) if exclude is not None else None
    for p in Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else []:
        run = RunFolder(p)
        if run.events_path.is_file() and run != skip:
            runs.append((run.events_path.stat().st_mtime, run))
    for _, run in sorted(runs, key=lambda r: r[0], reverse=True):
        if (resolution or batch_size) and not _matches(run, resolution, batch_size):
            continue
        rates = [1.0 / float(e["steps_per_s"]) for e in run.events()
                 if e.get("type") == "step" and (_float(e.get("steps_per_s")) or 0) > 0]
        if len(rates) >= 3:
            rates = sorted(rates[1:])  # the first step includes warm-up
            return rates[len(rates) // 2], run.name
    return None


def _matches(run: RunFolder, resolution: int | None, batch_size: int | None) -> bool:
    """False when the run's typed config says another resolution or batch size."""
    try:
        cfg = run.config()
    except RunError:
        return True  # nothing known about it: its speed still says something
    return not ((resolution and cfg.data.resolution != int(resolution))
                or (batch_size and cfg.train.batch_size != int(batch_size)))
