"""BLIP image captioning (the ``blip`` entry of :data:`studio.dataset.captioners.CAPTIONERS`).

BLIP's own openings ("a photo of", "there is", "arafed" ...) are stripped so the caption
template does not repeat them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from PIL import Image

log = logging.getLogger(__name__)

_LEADING = re.compile(
    r"^\s*(?:(?:arafed|araffe|arafly|araffed)\s+|"
    r"(?:there\s+(?:is|are)|this\s+is|here\s+is|it\s+is)\s+|"
    r"(?:an?\s+|the\s+)?(?:close\s*-?\s*up\s+)?(?:photo(?:graph)?|picture|image|pic|portrait|"
    r"selfie|snapshot|close\s*-?\s*up)\s+of\s+)+", re.IGNORECASE)


def clean_blip(text: str) -> str:
    """BLIP output without its stock openings and stray spaces."""
    s = re.sub(r"\s+", " ", (text or "")).strip()
    s = _LEADING.sub("", s).strip(" ,.")
    return s


class BlipCaptioner:
    """BLIP through :func:`studio.models.load_captioner` (cached); ``source`` is a Hub id or a
    folder (default: STUDIO_CAPTION_MODEL)."""

    name = "blip"

    def __init__(self, source: str | None = None, device: str | None = None,
                 max_new_tokens: int = 30, num_beams: int = 3):
        self.source, self.device = source, device
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

    def caption(self, images: Sequence[Image.Image], batch_size: int = 4,
                progress: Callable[[int, int], None] | None = None) -> list[str]:
        """Raw BLIP captions (cleaned of stock openings) for ``images``, in batches."""
        import torch

        from studio.models import GPU_LOCK, load_captioner

        processor, model = load_captioner(self.source, device=self.device)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        out: list[str] = []
        for start in range(0, len(images), max(1, batch_size)):
            batch = [im.convert("RGB") for im in images[start:start + batch_size]]
            inputs = processor(images=batch, return_tensors="pt")
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
                      for k, v in inputs.items()}
            with GPU_LOCK, torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                     num_beams=self.num_beams)
            texts = processor.batch_decode(ids, skip_special_tokens=True)
            out.extend(clean_blip(t) for t in texts)
            if progress:
                progress(len(out), len(images))
        return out
