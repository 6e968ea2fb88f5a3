"""What a generation asks for, and the one table of limits every front end derives from.

:data:`LIMITS` is the only place where the range of a request field is written. The HTTP API's
schema (``studio.api.schemas``), the Generate tab's sliders (``studio.ui.generate_tab``), the
``python -m studio generate`` arguments (``studio.cli``) and :meth:`GenerationRequest.validate`
all read it, so a client never meets a slider that allows what the server refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from studio.errors import StudioError
from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS

if TYPE_CHECKING:
    from studio.lora.refs import LoraRef

MAX_SEED = 2**32 - 1


class GenerationError(StudioError, ValueError):
    """A request the user must change (one sentence)."""


@dataclass(frozen=True)
class Limit:
    """The accepted range of one request field: ``lo <= v <= hi`` (``lo < v < hi`` when
    ``exclusive``), a multiple of ``multiple_of`` when set. ``step`` is the UI's slider step."""

    label: str
    lo: float
    hi: float
    default: float
    kind: type = int
    step: float = 1
    multiple_of: int | None = None
    exclusive: bool = False
    hint: str = ""

    def ok(self, value: float) -> bool:
        v = self.kind(value)
        inside = self.lo < v < self.hi if self.exclusive else self.lo <= v <= self.hi
        return inside and not (self.multiple_of and int(v) % self.multiple_of)

    def describe(self) -> str:
        """"a multiple of 8 between 64 and 2048", "between 0 and 1 (exclusive)", ..."""
        span = f"between {_num(self.lo)} and {_num(self.hi)}"
        if self.multiple_of:
            span = f"a multiple of {self.multiple_of} {span}"
        return span + (" (exclusive)" if self.exclusive else "")

    def check(self, value: float) -> None:
        """Raise :class:`GenerationError` (one sentence) when ``value`` is outside the limit."""
        try:
            good = self.ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            hint = f"; {self.hint}" if self.hint else ""
            raise GenerationError(f"{self.label} must be {self.describe()} (got {value}){hint}.")

    def ui_range(self) -> tuple[float, float]:
        """The slider's ends: the limit itself, one step inside when the ends are excluded."""
        if self.exclusive:
            return self.lo + self.step, self.hi - self.step
        return self.lo, self.hi


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


LIMITS: dict[str, Limit] = {
    "prompt": Limit("Prompt length", 1, 2000, 0, hint="describe the image to generate"),
    "negative_prompt": Limit("Negative prompt length", 0, 2000, 0),
    "steps": Limit("Steps", 1, 150, 30),
    "guidance": Limit("Guidance", 0, 30, 6.0, kind=float, step=0.5),
    "width": Limit("Width", 64, 2048, 1024, step=8, multiple_of=8),
    "height": Limit("Height", 64, 2048, 1024, step=8, multiple_of=8),
    "num_images": Limit("Number of images", 1, 8, 1),
    "lora_scale": Limit("LoRA scale", -4, 4, 1.0, kind=float, step=0.05),
    "refiner_switch": Limit("Refiner switch", 0, 1, 0.8, kind=float, step=0.05, exclusive=True,
                            hint="e.g. 0.8: the base does 80% of the denoising"),
    "seed": Limit("Seed", -1, MAX_SEED, -1, hint="-1 for random"),
}
"""Field name -> its limit; ``prompt``/``negative_prompt`` limit the length in characters."""

NUMERIC_FIELDS = ("steps", "guidance", "width", "height", "num_images", "lora_scale",
                  "refiner_switch", "seed")


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int = int(LIMITS["steps"].default)
    guidance: float = LIMITS["guidance"].default
    width: int = int(LIMITS["width"].default)
    height: int = int(LIMITS["height"].default)
    num_images: int = int(LIMITS["num_images"].default)
    scheduler: str = DEFAULT_SCHEDULER
    lora: str | LoraRef | None = None  # as typed (path or Hub id), or already resolved
    lora_scale: float = LIMITS["lora_scale"].default
    refiner: bool = False
    refiner_switch: float = LIMITS["refiner_switch"].default

    def validate(self) -> None:
        """Raise :class:`GenerationError` (one sentence) for the first field out of its limit."""
        if not self.prompt or not self.prompt.strip():
            raise GenerationError("The prompt is empty: describe the image to generate.")
        for name in ("prompt", "negative_prompt"):
            if len(getattr(self, name) or "") > LIMITS[name].hi:
                raise GenerationError(f"Prompts are limited to {_num(LIMITS[name].hi)} "
                                      "characters.")
        for name in NUMERIC_FIELDS:
            value = getattr(self, name)
            if (name == "seed" and value is None) or (name == "refiner_switch"
                                                      and not self.refiner):
                continue
            LIMITS[name].check(value)
        if self.scheduler not in SCHEDULERS:
            raise GenerationError(f"Unknown scheduler {self.scheduler!r}; choose one of: "
                                  f"{', '.join(SCHEDULERS)}.")
