"""Dataset loading (three local layouts), prompts from dataset.json, SDXL crop bookkeeping."""

from __future__ import annotations

import json
import random

import pytest
from _train_support import make_dataset
from PIL import Image

from studio.config import load_config
from studio.dataset import DatasetError
from studio.dataset.sources import load_dataset
from studio.train.data import (
    EpochSampler,
    TrainDataset,
    class_images,
    example_prompts,
    transform,
)


def test_prepared_dataset_imagefolder_and_txt_captions(tmp_path):
    ds = load_dataset(str(make_dataset(tmp_path / "prepared", n=3)))
    assert len(ds.examples) == 3 and ds.trigger == "tok" and ds.class_word == "person"
    assert ds.hash == "test-hash-3" and ds.examples[0].caption.startswith("a photo of tok person")

    folder = tmp_path / "imagefolder"
    folder.mkdir()
    Image.new("RGB", (70, 90), "red").save(folder / "a.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "red"}) + "\n")
    ds = load_dataset(str(folder), caption_column="caption")
    assert [e.caption for e in ds.examples] == ["red"] and len(ds.hash) == 64

    txt = tmp_path / "txt"
    txt.mkdir()
    Image.new("RGB", (64, 64), "blue").save(txt / "b.jpg")
    (txt / "b.txt").write_text("blue square\n")
    Image.new("RGB", (64, 64), "green").save(txt / "c.png")
    ds = load_dataset(str(txt))
    assert [e.caption for e in ds.examples] == ["blue square", None]
    # no caption, no trigger, no instance prompt -> a clear error naming the setting
    with pytest.raises(DatasetError, match="^data.instance_prompt:"):
        example_prompts(load_config(), ds)
    cfg = load_config(overrides=["data.instance_prompt=a photo of sks dog"])
    assert example_prompts(cfg, ds) == ["blue square", "a photo of sks dog"]
    cfg = load_config(overrides=["data.use_captions=false", "data.instance_prompt=x"])
    assert example_prompts(cfg, ds) == ["x", "x"]


def test_bad_datasets_are_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(str(tmp_path / "empty"))
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "metadata.jsonl").write_text(json.dumps({"file_name": "../../etc/passwd"}) + "\n")
    with pytest.raises(DatasetError, match="outside the dataset"):
        load_dataset(str(evil))


def test_transform_records_original_size_and_crop():
    img = Image.new("RGB", (200, 100))
    px, osz, ctl = transform(img, 64, "center", False, random.Random(0))
    assert tuple(px.shape) == (3, 64, 64) and osz == (100, 200)
    assert ctl == (0, 32)  # resized to 128x64, centre crop starts 32 px from the left
    assert px.min() >= -1 and px.max() <= 1
    tops = {transform(img, 64, "random", True, random.Random(s))[2] for s in range(20)}
    assert len(tops) > 1 and all(0 <= x <= 64 and y == 0 for y, x in tops)


def test_transform_resizes_with_lanczos_as_diffusers_does():
    import numpy as np
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((150, 100))
    px, _, _ = transform(img, 64, "center", False, random.Random(0))
    want = np.asarray(img.resize((96, 64), Image.Resampling.LANCZOS).crop((16, 0, 80, 64)), np.float32)
    np.testing.assert_allclose(px.permute(1, 2, 0).numpy(), want / 127.5 - 1.0, atol=1e-6)


def test_sampler_order_depends_only_on_seed_and_epoch(tmp_path):
    s = EpochSampler(6, seed=3)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(0)
    s.set_epoch(2)
    assert list(s) == a and sorted(i for _, i in a) == list(range(6))
    ds = load_dataset(str(make_dataset(tmp_path / "d", n=2)))
    td = TrainDataset(ds.examples, ["p", "q"], 64, "random", True, repeats=3, seed=1)
    assert len(td) == 6
    assert td[(1, 4)]["crop_top_left"] == td[(1, 4)]["crop_top_left"]  # reproducible on resume


def test_prior_preservation_draws_every_class_image_each_epoch_in_a_new_pairing(tmp_path):
    """3 photos, 8 class images: an epoch is 8 items (max of the two, as in diffusers), every
    class image is drawn once, and which photo it is paired with changes between epochs, the
    same way every time (resume)."""
    ds = load_dataset(str(make_dataset(tmp_path / "d", n=3)))
    folder = tmp_path / "class_images"
    folder.mkdir()
    for k in range(8):
        Image.new("RGB", (64, 64), (30 * k, 0, 0)).save(folder / f"class-{k:05d}.png")
    td = TrainDataset(ds.examples, ["p"] * 3, 64, "center", False, repeats=1, seed=4,
                      class_examples=class_images(folder), class_prompt_text="a photo of person")
    sampler = EpochSampler(len(td), seed=4)

    def pairs(epoch: int) -> list[tuple[int, int]]:
        sampler.set_epoch(epoch)
        return [(td[k]["index"], td[k]["class_index"]) for k in sampler]

    epochs = [pairs(e) for e in range(3)]
    assert len(td) == 8
    for e in epochs:
        assert sorted(c for _, c in e) == list(range(8))
        assert sorted({i for i, _ in e}) == [0, 1, 2]
    assert len({frozenset(e) for e in epochs}) == 3  # a new pairing each epoch
    assert pairs(1) == epochs[1]
    assert len(TrainDataset(ds.examples, ["p"] * 3, 64, "center", False, repeats=4, seed=4,
                            class_examples=class_images(folder))) == 12
