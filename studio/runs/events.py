"""``RUN/events.jsonl``: one JSON object per line (fsync per line), the run-folder contract.

Types: start, step, sample, checkpoint, likeness (studio.identity.scores), log, error, end. Every object has "type" and "time"
(unix seconds). Readers take the last value of a step when a step appears twice (a run resumed
from an older checkpoint after a hard kill re-runs the steps after that checkpoint).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from studio.fsutil import append_jsonl, parse_json_lines

EVENTS_FILE = "events.jsonl"


class EventWriter:
    """Appends events to ``RUN/events.jsonl``; does nothing when ``enabled`` is False
    (non-main processes of a multi-process run)."""

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(run_dir) / EVENTS_FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "time": round(time.time(), 3), **fields}
        if self.enabled:
            append_jsonl(self.path, event)
        return event

    def start(self, step: int, total_steps: int, resumed_from: str | None) -> None:
        self.emit("start", step=step, total_steps=total_steps, resumed_from=resumed_from,
                  pid=os.getpid())

    def step(self, step: int, total_steps: int, loss: float, lr: float, epoch: int,
             steps_per_s: float, eta_s: float, mem_gb: float) -> None:
        self.emit("step", step=step, total_steps=total_steps, loss=loss, lr=lr, epoch=epoch,
                  steps_per_s=steps_per_s, eta_s=eta_s, mem_gb=mem_gb)

    def sample(self, step: int, prompt: str, seed: int, path: str) -> None:
        self.emit("sample", step=step, prompt=prompt, seed=seed, path=path)

    def checkpoint(self, step: int, path: str) -> None:
        self.emit("checkpoint", step=step, path=path)

    def likeness(self, **scores: Any) -> None:
        self.emit("likeness", **scores)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def error(self, message: str) -> None:
        self.emit("error", message=message)

    def end(self, status: str, step: int, message: str) -> None:
        self.emit("end", status=status, step=step, message=message)


def read_events_from(path: str | os.PathLike, offset: int = 0) -> list[dict[str, Any]]:
    """The events of an events file from byte ``offset`` on (a torn last line is skipped)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, int(offset)))
            data = fh.read()
    except OSError:
        return []
    return parse_json_lines(data.split(b"\n"))


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All events of a run (a torn last line is skipped)."""
    return read_events_from(Path(run_dir) / EVENTS_FILE)
