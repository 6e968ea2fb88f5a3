"""Training data: prompts, transforms, the epoch sampler and class images. Datasets are read by
:mod:`studio.dataset.sources`.

Transforms follow diffusers' SDXL DreamBooth script: resize the short side to the resolution,
optional horizontal flip, center or random crop; the original size and the crop's top-left corner
are recorded for SDXL's ``add_time_ids``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.dataset import DatasetError
from studio.dataset.sources import (
    IMAGE_EXTS,
    Example,
    LoadedDataset,
    default_instance_prompt,
    load_dataset,
)
from studio.train.buckets import bucket_sampler
from studio.train.masks import mask_set
from studio.train.sdxl import pipeline_image

log = logging.getLogger(__name__)

# ---- prompts ---------------------------------------------------------------------------------
def instance_prompt(cfg: TrainConfig, ds: LoadedDataset) -> str | None:
    """The instance prompt: configured, else 'a photo of TRIGGER CLASS' from dataset.json."""
    if cfg.data.instance_prompt:
        return cfg.data.instance_prompt
    if ds.trigger:
        return default_instance_prompt(ds.trigger, ds.class_word)
    return None


def class_prompt(cfg: TrainConfig, ds: LoadedDataset) -> str:
    if cfg.data.class_prompt:
        return cfg.data.class_prompt
    if ds.class_word:
        return f"a photo of {ds.class_word}"
    raise DatasetError("data.class_prompt: prior preservation needs a class prompt (e.g. 'a photo "
                       "of person') and the dataset has no class word.")


def example_prompts(cfg: TrainConfig, ds: LoadedDataset) -> list[str]:
    """The prompt of each example: its caption (when used) or the instance prompt."""
    inst = instance_prompt(cfg, ds)
    out = []
    for ex in ds.examples:
        p = ex.caption if (cfg.data.use_captions and ex.caption) else inst
        if not p:
            raise DatasetError("data.instance_prompt: the images have no captions and no instance "
                               "prompt or dataset trigger is known; set data.instance_prompt.")
        out.append(p)
    return out


# ---- transforms ------------------------------------------------------------------------------
Size = int | tuple[int, int]  # a square side, or (height, width) of an aspect-ratio bucket


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_short_side(img, resolution: Size):
    """The image (PIL) resized (Lanczos) to cover ``resolution`` (its short side to a square's
    side; a bucket's height and width both covered) as an HxWx3 uint8 array (HxW for a
    one-channel image), and its original size (h, w)."""
    import numpy as np
    from PIL import Image

    th, tw = _hw(resolution)
    original_size = (img.height, img.width)
    scale = max(th / img.height, tw / img.width)
    w, h = max(tw, round(img.width * scale)), max(th, round(img.height * scale))
    return np.asarray(img.resize((w, h), Image.Resampling.LANCZOS), dtype=np.uint8), original_size


def crop_flip(arr, resolution: Size, crop: str, flip: bool, rng: random.Random):
    """Flip (probability 0.5) and crop a resized uint8 HxWxC array to ``resolution``; returns
    (CxHxW uint8 tensor, crop_top_left). The draws: flip first, then the crop's y and x."""
    import numpy as np
    import torch

    h, w = arr.shape[:2]
    th, tw = _hw(resolution)
    if flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    if crop == "center":
        y1 = max(0, int(round((h - th) / 2.0)))
        x1 = max(0, int(round((w - tw) / 2.0)))
    else:
        y1 = rng.randint(0, h - th)
        x1 = rng.randint(0, w - tw)
    out = np.ascontiguousarray(arr[y1:y1 + th, x1:x1 + tw])
    return torch.from_numpy(out).permute(2, 0, 1).contiguous(), (y1, x1)


def to_pixels(chw_uint8):
    """A uint8 CxHxW tensor as float pixel values in [-1, 1]."""
    import torch

    return chw_uint8.to(torch.float32) / 127.5 - 1.0


def transform(img, resolution: int, crop: str, flip: bool, rng: random.Random):
    """Resize/flip/crop; returns (tensor in [-1, 1] CxHxW, original_size (h, w), crop_top_left)."""
    arr, original_size = resize_short_side(img, resolution)
    px, ctl = crop_flip(arr, resolution, crop, flip, rng)
    return to_pixels(px), original_size, ctl


class TrainDataset:
    """Map-style dataset over (epoch, index) keys so augmentation is reproducible on resume.

    Each item: pixel_values, original_size, crop_top_left, prompt, index (instance image index);
    with prior preservation also the class_* counterparts. An epoch then has
    ``max(class images, instances * repeats)`` items, as in diffusers, so every class image is
    drawn once per epoch; the class images follow an order drawn from (seed, epoch), so which
    photo each one is paired with changes from epoch to epoch (and repeats on resume).

    Each photo is decoded once per run (per loader worker): without random crop or flip the
    cropped image is kept (uint8, 3 bytes a pixel); with them the resized image is kept and only
    cropped and flipped per item. Once the latents are cached (``pixels = False``) items carry no
    pixels and the photos are not read at all.
    """

    def __init__(self, examples: list[Example], prompts: list[str], resolution: int, crop: str,
                 flip: bool, repeats: int, seed: int, class_examples: list[Example] | None = None,
                 class_prompt_text: str | None = None):
        self.examples, self.prompts = examples, prompts
        self.resolution, self.crop, self.flip, self.seed = resolution, crop, flip, seed
        self.repeats = repeats
        self.class_examples = class_examples or []
        self.class_prompt = class_prompt_text
        self.pixels = True  # False once the latents are cached
        self.sizes: list[tuple[int, int]] | None = None  # each photo's bucket (data.buckets)
        self.masks = None  # studio.train.masks.MaskSet (data.mask_weight < 1)
        self._class_order: tuple[int, list[int]] | None = None  # (epoch, order), the last one
        self._images: dict[tuple[str, int], tuple[Any, tuple[int, int]]] = {}  # resized, size
        self._ready: dict[tuple[str, int], tuple[Any, tuple[int, int], tuple[int, int]]] = {}

    def __len__(self) -> int:
        return max(len(self.examples) * self.repeats, len(self.class_examples))

    @property
    def deterministic(self) -> bool:
        """True when an image's pixels are the same every epoch (center crop, no flip)."""
        return self.crop == "center" and not self.flip

    def size_of(self, key: tuple[str, int]) -> Size:
        """The training size of an image: its bucket (data.buckets), else the square."""
        return self.sizes[key[1]] if self.sizes and key[0] == "instance" else self.resolution

    def _resized(self, key: tuple[str, int]):
        """(resized uint8 array, original size) of an image, decoded on first use."""
        if key not in self._images:
            self._images[key] = resize_short_side(self._load(key), self.size_of(key))
        return self._images[key]

    def pixel_values(self, key: tuple[str, int], crop: str, flip: bool, rng: random.Random):
        """(pixel values, original size, crop top-left) of an image; kept when not random."""
        if key in self._ready:
            px, osz, ctl = self._ready[key]
            return to_pixels(px), osz, ctl
        if crop == "center" and not flip:
            arr, osz = resize_short_side(self._load(key), self.size_of(key))
            px, ctl = crop_flip(arr, self.size_of(key), crop, flip, rng)
            self._ready[key] = (px, osz, ctl)
            return to_pixels(px), osz, ctl
        arr, osz = self._resized(key)
        px, ctl = crop_flip(arr, self.size_of(key), crop, flip, rng)
        return to_pixels(px), osz, ctl

    def drop_pixels(self) -> None:
        """Items carry no pixels from now on (the latents are cached); the kept images go."""
        self.pixels = False
        self._images.clear()
        self._ready.clear()

    def _load(self, key: tuple[str, int]):
        examples = self.examples if key[0] == "instance" else self.class_examples
        return examples[key[1]].load()

    def class_index(self, i: int, epoch: int) -> int:
        """The class image paired with item ``i`` in ``epoch``."""
        if self._class_order is None or self._class_order[0] != epoch:
            order = list(range(len(self.class_examples)))
            random.Random(f"class-order:{self.seed}:{epoch}").shuffle(order)
            self._class_order = (epoch, order)
        order = self._class_order[1]
        return order[i % len(order)]

    def class_item(self, cidx: int) -> dict[str, Any]:
        """The class half of an item: class image ``cidx``, center-cropped, never flipped."""
        out = {"class_prompt": self.class_prompt, "class_index": cidx}
        if self.pixels:
            cpx, cosz, cctl = self.pixel_values(("class", cidx), "center", False, random.Random(0))
            out.update({"class_pixel_values": cpx, "class_original_size": cosz,
                        "class_crop_top_left": cctl})
        return out

    def instance_item(self, i: int, epoch: int = 0) -> dict[str, Any]:
        """The instance half of item ``i``: its photo with the (seed, epoch, i) crop and flip."""
        idx = i % len(self.examples)
        out = {"prompt": self.prompts[idx], "index": idx}
        if self.pixels:
            rng = random.Random(hash((self.seed, epoch, i)) & 0xFFFFFFFF)
            draws = rng.getstate()  # the mask repeats the image's flip and crop
            px, osz, ctl = self.pixel_values(("instance", idx), self.crop, self.flip, rng)
            out.update({"pixel_values": px, "original_size": osz, "crop_top_left": ctl})
            if self.masks is not None:
                out["mask"] = self.masks.mask(idx, self.size_of(("instance", idx)), self.crop,
                                              self.flip, draws)
        return out

    def item(self, i: int, epoch: int = 0) -> dict[str, Any]:
        out = self.instance_item(i, epoch)
        if self.class_examples:
            out.update(self.class_item(self.class_index(i, epoch)))
        return out

    def __getitem__(self, key) -> dict[str, Any]:
        epoch, i = key if isinstance(key, (tuple, list)) else (0, key)
        return self.item(int(i), int(epoch))


class EpochSampler:
    """Yields (epoch, index) keys in a seeded order that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter([(self.epoch, i) for i in order])


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items; with prior preservation the class halves follow the instance halves. Items
    without pixels (cached latents) give ``pixel_values`` None and no sizes."""
    import torch

    prompts = [it["prompt"] for it in items]
    idx = [("instance", it["index"]) for it in items]
    if "class_index" in items[0]:
        prompts += [it["class_prompt"] for it in items]
        idx += [("class", it["class_index"]) for it in items]
    out = {"pixel_values": None, "original_sizes": None, "crop_top_lefts": None,
           "prompts": prompts, "keys": idx}
    if "pixel_values" not in items[0]:
        return out
    px = [it["pixel_values"] for it in items]
    osz = [it["original_size"] for it in items]
    ctl = [it["crop_top_left"] for it in items]
    if "class_index" in items[0]:
        px += [it["class_pixel_values"] for it in items]
        osz += [it["class_original_size"] for it in items]
        ctl += [it["class_crop_top_left"] for it in items]
    out.update({"pixel_values": torch.stack(px), "original_sizes": osz, "crop_top_lefts": ctl})
    if "mask" in items[0]:  # face masks of the instance half (studio.train.masks)
        out["masks"] = torch.stack([it["mask"] for it in items])
    return out


# ---- class images ----------------------------------------------------------------------------
def class_images(folder: Path) -> list[Example]:
    if not folder.is_dir():
        return []
    return [Example(p, None) for p in sorted(folder.iterdir())
            if p.suffix.lower() in IMAGE_EXTS and p.is_file()]


def ensure_class_images(folder: Path, wanted: int, prompt: str, make_pipeline, resolution: int,
                        steps: int, seed: int, device: str, log_fn=None) -> list[Example]:
    """Generate the missing class images with the base model (``make_pipeline()``) into ``folder``."""
    have = class_images(folder)
    missing = wanted - len(have)
    if missing <= 0:
        return have[:wanted]
    import torch

    from studio.fsutil import atomic_write

    if log_fn:
        log_fn(f"Generating {missing} class images ('{prompt}') with the base model.")
    folder.mkdir(parents=True, exist_ok=True)
    pipe = make_pipeline()
    for k in range(missing):
        n = len(have) + k
        g = torch.Generator(device="cpu").manual_seed(seed + n)
        # The frozen models in their training dtypes, no autocast (as diffusers' script); the
        # VAE decodes in its own dtype (fp32 beside a bf16/fp16 UNet when force_upcast).
        img = pipeline_image(pipe, prompt=prompt, num_inference_steps=steps, height=resolution,
                             width=resolution, generator=g)
        name = f"class-{n:05d}.png"
        atomic_write(folder / name, lambda p, im=img: im.save(p, format="PNG"))
    del pipe
    return class_images(folder)[:wanted]


# ---- the training data of a run -------------------------------------------------------------
@dataclass
class TrainingData:
    source: LoadedDataset
    instance_prompt: str
    dataset: TrainDataset
    sampler: EpochSampler
    loader: Any  # torch DataLoader of (epoch, index) keys


def training_data(cfg: TrainConfig, class_images_dir: Path,
                  ensure_class: Callable[[Path, str], None]) -> TrainingData:
    """Read the dataset (through :mod:`studio.dataset.sources`) and build the loader. With prior
    preservation, ``ensure_class(folder, class prompt)`` first makes sure the class images are
    there (``class_images_dir`` unless data.class_data_dir is set)."""
    import torch

    d = cfg.data
    ds = load_dataset(d.dataset or "", d.image_column, d.caption_column)
    prompts = example_prompts(cfg, ds)
    inst = instance_prompt(cfg, ds) or prompts[0]
    class_examples, cprompt = None, None
    if d.with_prior_preservation:
        cprompt = class_prompt(cfg, ds)
        folder = Path(d.class_data_dir).expanduser() if d.class_data_dir else class_images_dir
        ensure_class(folder, cprompt)
        class_examples = class_images(folder)[: d.num_class_images]
        if not class_examples:
            raise DatasetError(f"data.class_data_dir: no class images in {folder}.")
    dataset = TrainDataset(ds.examples, prompts, d.resolution, d.crop, d.random_flip, d.repeats,
                           cfg.train.seed, class_examples, cprompt)
    dataset.masks = mask_set(cfg, ds.examples, resize_short_side, crop_flip)
    sampler = EpochSampler(len(dataset), cfg.train.seed)
    batching: dict[str, Any] = {"batch_size": cfg.train.batch_size, "sampler": sampler}
    if d.buckets:  # each batch from one aspect-ratio bucket
        sampler = bucket_sampler(dataset, cfg)
        batching = {"batch_sampler": sampler}
    # The loader's own generator: each new iterator (every epoch, and the one a resume makes to
    # skip the batches already trained) draws its seed from it, not from the global RNG that the
    # training steps draw their noise from, so a resumed run draws what an unbroken one does.
    loader = torch.utils.data.DataLoader(dataset, **batching, collate_fn=collate,
                                         num_workers=cfg.train.dataloader_num_workers,
                                         # workers keep their decoded photos across epochs
                                         persistent_workers=cfg.train.dataloader_num_workers > 0,
                                         generator=torch.Generator().manual_seed(cfg.train.seed))
    return TrainingData(ds, inst, dataset, sampler, loader)
