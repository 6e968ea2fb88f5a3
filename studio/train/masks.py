"""Face-weighted loss (``data.mask_weight`` < 1): each pixel's loss is weighted by the face mask
of its photo, ``mask_weight + (1 - mask_weight) * mask``, so the face and hair count fully and
the rest of the photo counts ``mask_weight`` (0.3: about a third).

The masks come from a prepared dataset (``masks/0001.png``, written by
:mod:`studio.dataset.masks`; :mod:`studio.dataset.store` says where, and which ones the user
switched off). A photo without a mask weighs every pixel fully. Each mask goes through the same
resize, flip and crop as its photo (the same random draws), is kept at pixel resolution as uint8
(cached latents keep theirs too) and is averaged down to the latents' resolution in the loss.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.config import ConfigError, TrainConfig
from studio.dataset import store

log = logging.getLogger(__name__)


class MaskSet:
    """The face masks of a dataset's photos (``paths[i]`` None: no mask), transformed like
    their photos by ``resize(img, size)`` and ``crop(arr, size, crop, flip, rng)`` (the
    functions :mod:`studio.train.data` transforms photos with)."""

    def __init__(self, paths: list[Path | None], weight: float, resize: Callable,
                 crop: Callable):
        self.paths, self.weight, self._resize, self._crop = paths, weight, resize, crop
        self._arrays: dict[tuple[int, Any], Any] = {}  # (index, size) -> resized HxWx1 uint8

    def mask(self, idx: int, size, crop: str, flip: bool, draws: Any):
        """The 1xHxW uint8 mask of photo ``idx`` at ``size``, flipped and cropped with the random
        state ``draws`` (the one its photo was transformed with)."""
        import torch

        h, w = (size, size) if isinstance(size, int) else size
        if self.paths[idx] is None:
            return torch.full((1, h, w), 255, dtype=torch.uint8)
        key = (idx, size)
        if key not in self._arrays:
            from PIL import Image

            with Image.open(self.paths[idx]) as im:
                self._arrays[key] = self._resize(im.convert("L"), size)[0][..., None]
        rng = random.Random()
        rng.setstate(draws)
        return self._crop(self._arrays[key], size, crop, flip, rng)[0]


def mask_set(cfg: TrainConfig, examples: list[Any], resize: Callable,
             crop: Callable) -> MaskSet | None:
    """The masks of ``examples`` when ``data.mask_weight`` < 1 (else None); a ConfigError when
    the dataset has no mask at all (nothing would be weighted)."""
    d = cfg.data
    if d.mask_weight >= 1.0:
        return None
    folder = Path(d.dataset or "").expanduser()
    paths = [store.image_mask(folder, Path(ex.source).name)
             if isinstance(ex.source, (str, Path)) and store.is_dataset(folder) else None
             for ex in examples]
    if not any(paths):
        raise ConfigError(f"data.mask_weight: the dataset {folder.name or d.dataset} has no face "
                          "masks switched on (prepare it again with this studio), or set "
                          "data.mask_weight=1.")
    log.info("face-weighted loss: %d of %d photos have a mask", sum(p is not None for p in paths),
             len(paths))
    return MaskSet(paths, d.mask_weight, resize, crop)


def loss_weights(masks, latents, mask_weight: float):
    """Per-latent-pixel loss weights [B, 1, h, w] from a batch's uint8 masks [B, 1, H, W]."""
    import torch
    import torch.nn.functional as F

    m = F.interpolate(masks.to(latents.device, torch.float32) / 255.0, size=latents.shape[-2:],
                      mode="area")
    return mask_weight + (1.0 - mask_weight) * m
