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
def transform(img, resolution: int, crop: str, flip: bool, rng: random.Random):
    """Resize/flip/crop; returns (tensor in [-1, 1] CxHxW, original_size (h, w), crop_top_left)."""
    import numpy as np
    import torch
    from PIL import Image

    original_size = (img.height, img.width)
    scale = resolution / min(img.width, img.height)
    w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if crop == "center":
        y1 = max(0, int(round((h - resolution) / 2.0)))
        x1 = max(0, int(round((w - resolution) / 2.0)))
    else:
        y1 = rng.randint(0, h - resolution)
        x1 = rng.randint(0, w - resolution)
    img = img.crop((x1, y1, x1 + resolution, y1 + resolution))
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), original_size, (y1, x1)


class TrainDataset:
    """Map-style dataset over (epoch, index) keys so augmentation is reproducible on resume.

    Each item: pixel_values, original_size, crop_top_left, prompt, index (instance image index);
    with prior preservation also the class_* counterparts. An epoch then has
    ``max(class images, instances * repeats)`` items, as in diffusers, so every class image is
    drawn once per epoch; the class images follow an order drawn from (seed, epoch), so which
    photo each one is paired with changes from epoch to epoch (and repeats on resume).
    """

    def __init__(self, examples: list[Example], prompts: list[str], resolution: int, crop: str,
                 flip: bool, repeats: int, seed: int, class_examples: list[Example] | None = None,
                 class_prompt_text: str | None = None):
        self.examples, self.prompts = examples, prompts
        self.resolution, self.crop, self.flip, self.seed = resolution, crop, flip, seed
        self.repeats = repeats
        self.class_examples = class_examples or []
        self.class_prompt = class_prompt_text
        self._class_order: tuple[int, list[int]] | None = None  # (epoch, order), the last one

    def __len__(self) -> int:
        return max(len(self.examples) * self.repeats, len(self.class_examples))

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
        cpx, cosz, cctl = transform(self.class_examples[cidx].load(), self.resolution, "center",
                                    False, random.Random(0))
        return {"class_pixel_values": cpx, "class_original_size": cosz,
                "class_crop_top_left": cctl, "class_prompt": self.class_prompt,
                "class_index": cidx}

    def instance_item(self, i: int, epoch: int = 0) -> dict[str, Any]:
        """The instance half of item ``i``: its photo with the (seed, epoch, i) crop and flip."""
        idx = i % len(self.examples)
        rng = random.Random(hash((self.seed, epoch, i)) & 0xFFFFFFFF)
        px, osz, ctl = transform(self.examples[idx].load(), self.resolution, self.crop, self.flip, rng)
        return {"pixel_values": px, "original_size": osz, "crop_top_left": ctl,
                "prompt": self.prompts[idx], "index": idx}

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
    """Batch items; with prior preservation the class halves follow the instance halves."""
    import torch

    px = [it["pixel_values"] for it in items]
    osz = [it["original_size"] for it in items]
    ctl = [it["crop_top_left"] for it in items]
    prompts = [it["prompt"] for it in items]
    idx = [("instance", it["index"]) for it in items]
    if "class_pixel_values" in items[0]:
        px += [it["class_pixel_values"] for it in items]
        osz += [it["class_original_size"] for it in items]
        ctl += [it["class_crop_top_left"] for it in items]
        prompts += [it["class_prompt"] for it in items]
        idx += [("class", it["class_index"]) for it in items]
    return {"pixel_values": torch.stack(px), "original_sizes": osz, "crop_top_lefts": ctl,
            "prompts": prompts, "keys": idx}


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
    sampler = EpochSampler(len(dataset), cfg.train.seed)
    # The loader's own generator: each new iterator (every epoch, and the one a resume makes to
    # skip the batches already trained) draws its seed from it, not from the global RNG that the
    # training steps draw their noise from, so a resumed run draws what an unbroken one does.
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                                         collate_fn=collate,
                                         num_workers=cfg.train.dataloader_num_workers,
                                         generator=torch.Generator().manual_seed(cfg.train.seed))
    return TrainingData(ds, inst, dataset, sampler, loader)
