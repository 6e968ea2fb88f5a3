"""Captioners: the :class:`Captioner` interface and the registry of kinds.

A captioner turns crops into raw captions; the pipeline then puts each one into the caption
template (:func:`studio.dataset.caption.render`). A new kind is one module with a class that
takes ``(source=None, **options)`` and has ``caption()``, plus one line in :data:`CAPTIONERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from PIL import Image

from studio.dataset import DatasetError
from studio.dataset.blip import BlipCaptioner


@runtime_checkable
class Captioner(Protocol):
    name: str
    source: str | None
    """The model it runs (a Hub id or folder; None for the kind's default)."""

    def caption(self, images: Sequence[Image.Image], batch_size: int = 4,
                progress: Callable[[int, int], None] | None = None) -> list[str]:
        """One raw caption per image, in order; ``progress(done, total)`` after each batch."""
        ...


CAPTIONERS: dict[str, Callable[..., Captioner]] = {
    "blip": BlipCaptioner,
}
"""Captioner kind -> factory(source=None, **options). The first entry is the default."""
DEFAULT_CAPTIONER = next(iter(CAPTIONERS))


def get_captioner(kind: str = DEFAULT_CAPTIONER, source: str | None = None,
                  **options) -> Captioner:
    """A captioner of ``kind`` running ``source``; nothing is loaded until it captions."""
    factory = CAPTIONERS.get((kind or DEFAULT_CAPTIONER).lower())
    if factory is None:
        raise DatasetError(f"Unknown captioner {kind!r}; use {', '.join(CAPTIONERS)}.")
    return factory(source, **options)
