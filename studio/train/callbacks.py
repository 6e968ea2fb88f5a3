"""How the trainer reports: :class:`TrainCallbacks` (override what you need), the fan-out that
calls several of them, and :class:`EventCallbacks`, which writes the run's events.jsonl.

The trainer imports nothing from a UI: the CLI's progress bar, a benchmark's timer and the
run-folder events are all callbacks (OneTrainer's ``TrainCallbacks``). ``stop`` (a
``threading.Event``-like :class:`StopFlag`) is how a caller asks the trainer to stop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from studio.runs.events import EventWriter

log = logging.getLogger(__name__)


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class TrainCallbacks:
    """Override what you need; every method is a no-op here."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, info: dict[str, Any]) -> None: ...
    def on_sample(self, info: dict[str, Any]) -> None: ...
    def on_checkpoint(self, info: dict[str, Any]) -> None: ...
    def on_likeness(self, info: dict[str, Any]) -> None: ...
    def on_log(self, level: str, message: str) -> None: ...
    def on_end(self, info: dict[str, Any]) -> None: ...


class Fanout(TrainCallbacks):
    """Calls every callback in turn; a broken observer is logged and never stops training."""

    def __init__(self, items: list[TrainCallbacks]):
        self.items = items

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def call(*a, **k):
                for cb in object.__getattribute__(self, "items"):
                    try:
                        getattr(cb, name)(*a, **k)
                    except Exception:
                        log.exception("callback %s failed", name)
            return call
        return object.__getattribute__(self, name)


class EventCallbacks(TrainCallbacks):
    """Writes the run-folder events (main process only)."""

    def __init__(self, writer: EventWriter):
        self.w = writer

    def on_start(self, info):
        self.w.start(info["step"], info["total_steps"], info["resumed_from"])

    def on_step(self, info):
        self.w.step(info["step"], info["total_steps"], info["loss"], info["lr"], info["epoch"],
                    info["steps_per_s"], info["eta_s"], info["mem_gb"])

    def on_sample(self, info):
        self.w.sample(info["step"], info["prompt"], info["seed"], info["path"])

    def on_checkpoint(self, info):
        self.w.checkpoint(info["step"], info["path"])

    def on_likeness(self, info):
        self.w.likeness(**info)

    def on_log(self, level, message):
        self.w.log(message, level)

    def on_end(self, info):
        if info["status"] == "failed":
            self.w.error(info["message"])
        self.w.end(info["status"], info["step"], info["message"])
