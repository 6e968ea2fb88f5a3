"""The trainer's user error, and how any failure becomes the one line of the "end" event."""

from __future__ import annotations

from studio.errors import StudioError, first_line


class TrainingError(StudioError, RuntimeError):
    """A training failure meant for the user; ``str()`` is one line."""


OOM_MESSAGE = ("The GPU ran out of memory at step {step}; lower data.resolution, train.batch_size or "
               "lora.rank, or turn on train.gradient_checkpointing, data.cache_latents, "
               "train.optimizer=adamw8bit and train.mixed_precision=fp16 (or use --preset low-vram).")


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException, step: int) -> tuple[str, str, BaseException]:
    """(end status, one-line message, the exception to raise) for a failure after ``step`` steps.

    A user error (:class:`StudioError`) keeps its sentence; anything else is prefixed with its
    class name; running out of GPU memory becomes a :class:`TrainingError` naming the settings
    that save memory.
    """
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled", "Interrupted.", exc
    if is_oom(exc):
        msg = OOM_MESSAGE.format(step=step + 1)
        return "failed", msg, TrainingError(msg)
    msg = first_line(exc, limit=300)
    if not isinstance(exc, StudioError):
        msg = f"{type(exc).__name__}: {msg}"
    return "failed", msg, exc
