"""Aspect-ratio buckets (``data.buckets``): images keep their shape instead of a square crop.

Each photo goes to the bucket whose aspect ratio is nearest its own (in log ratio) among SDXL's
standard training resolutions: 1024x1024, 1152x896, 1216x832, 1344x768, 1536x640 and their
transposes (about 1024^2 pixels, sides multiples of 64). For another ``data.resolution`` r the
sides scale by r/1024 and round to a multiple of ``max(16, 64 r/1024)``, so a 64 px test run
still has distinct shapes (64x64, 80x64, 80x48, 96x48 ...). A photo is resized to cover its
bucket and cropped (center or random, flip as configured); SDXL's time ids then carry its
original size, the crop and the bucket as the target size.

:class:`BucketBatchSampler` makes every batch from one bucket; the order of the images in each
bucket and of the batches depends only on (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from typing import Any

log = logging.getLogger(__name__)

# SDXL's standard resolutions (height, width) at 1024^2 pixels; the transposes are added.
SDXL_BUCKETS = ((1024, 1024), (1152, 896), (1216, 832), (1344, 768), (1536, 640))


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """The (height, width) buckets at ``resolution`` (distinct, tallest first)."""
    step = max(16, (64 * resolution // 1024) // 16 * 16)
    out: set[tuple[int, int]] = set()
    for h, w in SDXL_BUCKETS:
        sh = max(step, int(h * resolution / 1024 / step + 0.5) * step)
        sw = max(step, int(w * resolution / 1024 / step + 0.5) * step)
        out.update({(sh, sw), (sw, sh)})
    return sorted(out, key=lambda s: -s[0] / s[1])


def nearest_bucket(height: int, width: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest ``height/width`` (log ratio; ties: the first)."""
    ratio = math.log(height / width)
    return min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - ratio))


def assign_buckets(image_sizes: list[tuple[int, int]], resolution: int) -> list[tuple[int, int]]:
    """The bucket of each image, given each image's (height, width)."""
    sizes = bucket_sizes(resolution)
    return [nearest_bucket(h, w, sizes) for h, w in image_sizes]


def image_size(example) -> tuple[int, int]:
    """(height, width) of a dataset example as the loader will see it (EXIF rotation counted),
    from the file's header: nothing is decoded."""
    from pathlib import Path

    from PIL import Image

    src = example.source
    im = Image.open(src) if isinstance(src, (str, Path)) else src
    try:
        w, h = im.size
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    finally:
        if im is not src:
            im.close()
    return (w, h) if turned else (h, w)


class BucketBatchSampler:
    """Batches of (epoch, index) keys, each batch from one bucket, in a (seed, epoch) order.

    ``buckets[j]`` is the bucket of example ``j``; item ``i`` of the dataset (of ``n_items``)
    shows example ``i % len(buckets)``. The last batch of a bucket may be smaller."""

    def __init__(self, buckets: list[tuple[int, int]], n_items: int, batch_size: int, seed: int):
        self.buckets, self.n_items, self.batch_size, self.seed = buckets, n_items, batch_size, seed
        self.epoch = 0
        self.groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in range(n_items):
            self.groups[buckets[i % len(buckets)]].append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(math.ceil(len(v) / self.batch_size) for v in self.groups.values())

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = random.Random(f"buckets:{self.seed}:{epoch}")
        out: list[list[tuple[int, int]]] = []
        for size in sorted(self.groups):
            items = list(self.groups[size])
            rng.shuffle(items)
            out += [[(epoch, i) for i in items[k:k + self.batch_size]]
                    for k in range(0, len(items), self.batch_size)]
        rng.shuffle(out)
        return out

    def __iter__(self):
        return iter(self.batches(self.epoch))


def bucket_plan(examples: list[Any], resolution: int) -> list[tuple[int, int]]:
    """The bucket of each example of a dataset (its file's size; EXIF rotation counted)."""
    return assign_buckets([image_size(ex) for ex in examples], resolution)


def bucket_sampler(dataset, cfg) -> BucketBatchSampler:
    """Give ``dataset`` (a :class:`studio.train.data.TrainDataset`) its photos' buckets and
    return the batch sampler over them."""
    from studio.config import ConfigError

    d = cfg.data
    if d.with_prior_preservation:
        raise ConfigError("data.buckets: the class images of data.with_prior_preservation are "
                          "square, so they cannot share a batch with a bucket; turn one off.")
    dataset.sizes = bucket_plan(dataset.examples, d.resolution)
    log.info("aspect-ratio buckets: %s", {f"{h}x{w}": dataset.sizes.count((h, w))
                                          for h, w in sorted(set(dataset.sizes))})
    return BucketBatchSampler(dataset.sizes, len(dataset), cfg.train.batch_size, cfg.train.seed)
