"""The training data path decodes each photo once per run: without random crop or flip the
transformed image is kept, with them the resized image is kept and only cropped and flipped per
item, and with cached latents the photos are not read during training at all. The pixels are
the ones the per-item PIL transform (diffusers' SDXL DreamBooth order) gives."""

from __future__ import annotations

import random

import numpy as np
import pytest
from _train_support import fast_overrides, make_dataset
from PIL import Image

from studio.config import load_config
from studio.dataset.sources import Example
from studio.train.callbacks import TrainCallbacks
from studio.train.data import TrainDataset, transform
from studio.train.loop import Trainer


def _pil_transform(img, resolution, crop, flip, rng):
    """The per-item transform as PIL operations: resize, flip, crop (the reference)."""
    scale = resolution / min(img.width, img.height)
    w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.LANCZOS)
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if crop == "center":
        y1, x1 = max(0, int(round((h - resolution) / 2.0))), max(0, int(round((w - resolution) / 2.0)))
    else:
        y1, x1 = rng.randint(0, h - resolution), rng.randint(0, w - resolution)
    arr = np.asarray(img.crop((x1, y1, x1 + resolution, y1 + resolution)), np.float32)
    return arr / 127.5 - 1.0, (y1, x1)


def _photos(n: int, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(Image.fromarray(rng.integers(0, 255, (70 + 9 * k, 90 - 5 * k, 3), np.uint8)),
                    None) for k in range(n)]


class _Counting:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = Example.load

        def load(ex):
            self.calls += 1
            return real(ex)

        monkeypatch.setattr(Example, "load", load)


@pytest.mark.parametrize("crop,flip", [("center", False), ("random", True), ("random", False),
                                       ("center", True)])
def test_each_photo_is_decoded_once_per_run_and_items_match_the_pil_transform(crop, flip,
                                                                             monkeypatch):
    examples, classes = _photos(3), _photos(2, seed=1)
    ds = TrainDataset(examples, ["p"] * 3, 32, crop, flip, repeats=2, seed=5,
                      class_examples=classes, class_prompt_text="a photo of person")
    loads = _Counting(monkeypatch)
    for epoch in range(3):
        for i in range(len(ds)):
            item = ds[(epoch, i)]
            rng = random.Random(hash((5, epoch, i)) & 0xFFFFFFFF)
            want, ctl = _pil_transform(examples[i % 3].load(), 32, crop, flip, rng)
            loads.calls -= 1  # the reference's own load
            assert item["crop_top_left"] == ctl
            assert np.array_equal(item["pixel_values"].permute(1, 2, 0).numpy(), want)
            cwant, _ = _pil_transform(classes[item["class_index"]].load(), 32, "center", False,
                                      random.Random(0))
            loads.calls -= 1
            assert np.array_equal(item["class_pixel_values"].permute(1, 2, 0).numpy(), cwant)
    assert loads.calls == len(examples) + len(classes)  # 36 items, 5 decodes


def test_transform_keeps_the_pil_results():
    img = _photos(1)[0].load()
    for s in range(10):
        px, osz, ctl = transform(img, 40, "random", True, random.Random(s))
        want, wctl = _pil_transform(img, 40, "random", True, random.Random(s))
        assert ctl == wctl and osz == (img.height, img.width)
        assert np.array_equal(px.permute(1, 2, 0).numpy(), want)


def test_without_pixels_items_never_touch_the_photos(monkeypatch):
    ds = TrainDataset(_photos(2), ["a", "b"], 32, "random", True, repeats=1, seed=0,
                      class_examples=_photos(1), class_prompt_text="c")
    ds[(0, 0)]
    ds.drop_pixels()
    loads = _Counting(monkeypatch)
    item = ds[(1, 1)]
    assert loads.calls == 0 and "pixel_values" not in item and "class_pixel_values" not in item
    assert item["prompt"] == "b" and item["class_index"] == 0


class _Started(TrainCallbacks):
    def __init__(self, loads):
        self.loads, self.at_start, self.steps = loads, None, 0

    def on_start(self, info):
        self.at_start = self.loads.calls

    def on_step(self, info):
        self.steps += 1


@pytest.mark.parametrize("extra,most", [
    (["data.cache_latents=true", "data.random_flip=true"], 0),
    ([], 0),  # centre crop, no flip: the latents are cached by default
    (["data.cache_latents=false"], 2),
    (["data.crop=random", "data.random_flip=true"], 2)],
    ids=["cached", "default", "center", "random"])
def test_training_steps_decode_no_photo_again(extra, most, tmp_path, tiny_models, monkeypatch):
    """6 steps over 2 photos (3 epochs): cached latents read no photo once training starts;
    otherwise each photo is decoded once, in the first epoch."""
    ds = make_dataset(tmp_path / "ds", n=2)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", ds, tiny_models["base"], steps=6)
                      + extra)
    loads = _Counting(monkeypatch)
    cb = _Started(loads)
    assert Trainer(cfg, cb).run().status == "finished"
    assert cb.steps == 6
    assert loads.calls - cb.at_start == most
    if most == 0:
        assert cb.at_start == 2  # the latent cache read each photo once


def test_loader_workers_keep_their_photos_across_epochs(tmp_path, tiny_models):
    """With loader workers the workers persist (their decoded photos with them) and the run is
    the one the main process would train."""
    ds = make_dataset(tmp_path / "ds", n=2)
    losses = []
    for workers in (0, 1):
        cfg = load_config(overrides=fast_overrides(tmp_path / f"run{workers}", ds,
                                                   tiny_models["base"], steps=4)
                          + [f"train.dataloader_num_workers={workers}", "data.crop=random",
                             "data.random_flip=true"])
        trainer = Trainer(cfg)
        result = trainer.run()
        assert result.status == "finished"
        losses.append(result.loss_history)
    assert trainer.loader.persistent_workers
    assert losses[0] == losses[1]


def test_latents_are_cached_by_default_unless_a_random_crop_or_flip_is_asked_for():
    from studio.train.caches import latents_wanted

    assert latents_wanted(load_config().data)
    assert latents_wanted(load_config(preset="portrait").data)
    assert latents_wanted(load_config(preset="low-vram").data)
    assert not latents_wanted(load_config(overrides=["data.random_flip=true"]).data)
    assert not latents_wanted(load_config(overrides=["data.crop=random"]).data)
    assert not latents_wanted(load_config(preset="portrait", overrides=["data.cache_latents=false"]).data)
    assert latents_wanted(load_config(overrides=["data.cache_latents=true", "data.crop=random"]).data)
