"""Face-weighted loss and aspect-ratio buckets on the tiny models: the dataset's face masks (made
at preparation, switchable per image), the weighted loss (a blank mask with weight 0 trains
nothing, a mask of ones changes nothing), and buckets (one bucket per batch, time ids that carry
the bucket)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _train_support import fast_overrides, make_dataset
from PIL import Image
from safetensors.torch import load_file

from studio.config import ConfigError, load_config
from studio.dataset import store
from studio.dataset.crop import crop_face
from studio.dataset.faces import Face
from studio.dataset.masks import face_mask
from studio.train.buckets import BucketBatchSampler, bucket_sizes
from studio.train.loop import Trainer
from studio.train.loss import dreambooth_loss
from studio.train.masks import loss_weights


def _masked_dataset(root, value: int, n: int = 2, size=(96, 80)):
    ds = make_dataset(root, n=n, size=size)
    (ds / store.MASKS).mkdir()
    for i in range(n):
        Image.new("L", size, value).save(ds / store.MASKS / f"{i:04d}.png")
    return ds


def test_face_mask_covers_face_and_hair_feathered():
    img = Image.new("RGB", (800, 800), (120, 120, 120))
    face = Face(box=(300.0, 300.0, 500.0, 520.0), landmarks=np.array(
        [[350, 380], [450, 380], [400, 430], [360, 480], [440, 480]], dtype=np.float64))
    crop = crop_face(img, [face], "head-and-shoulders", out=256)
    mask = np.asarray(face_mask(crop))
    assert mask.shape == (256, 256)
    cx, cy = (int(round(v)) for v in crop.window.to_crop((400, 400), 256))
    top = int(round(crop.window.to_crop((400, 300), 256)[1]))
    assert mask[cy, cx] == 255 and mask[top - 5, cx] > 200  # the face, and the hair above it
    assert mask[2, 2] == 0 and mask[-3, -3] == 0
    assert ((mask > 10) & (mask < 245)).sum() > 100  # feathered edge
    full = crop_face(img, [face], "full", out=256)
    assert face_mask(full) is None


def test_store_keeps_masks_and_switches_them_off(tmp_path):
    crop, orig = Image.new("RGB", (64, 64)), Image.new("RGB", (80, 80))
    entries = [store.Entry("0001.png", crop, orig, "a", mask=Image.new("L", (64, 64), 255)),
               store.Entry("0002.png", crop, orig, "b")]
    ds = store.write_dataset(tmp_path / "ds", entries, {"trigger": "tok"}, {})
    assert store.image_mask(ds.path, "0001.png") is not None
    assert store.image_mask(ds.path, "0002.png") is None
    assert store.set_mask_on(ds.path, "0001.png", False) == {"0001.png"}
    assert store.image_mask(ds.path, "0001.png") is None
    assert store.mask_file(ds.path, "0001.png") is not None  # off, not deleted
    store.set_mask_on(ds.path, "0001.png", True)
    assert store.image_mask(ds.path, "0001.png") is not None
    store.save_captions(ds.path, {}, drop=["0001.png"])
    assert store.mask_file(ds.path, "0001.png") is None


def test_mask_of_ones_gives_the_unmasked_loss(tiny_models):
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn((2, 4, 8, 8), generator=g), torch.randn((2, 4, 8, 8), generator=g)
    models = SimpleNamespace(noise_scheduler=None, prediction_type="epsilon")
    ones = torch.full((2, 1, 64, 64), 255, dtype=torch.uint8)
    plain = dreambooth_loss(pred, target, None, models, None, False, 1.0)
    weighted = dreambooth_loss(pred, target, None, models, None, False, 1.0,
                               loss_weights(ones, pred, 0.3))
    torch.testing.assert_close(weighted, plain, rtol=1e-6, atol=0)
    blank = loss_weights(torch.zeros_like(ones), pred, 0.0)
    assert float(dreambooth_loss(pred, target, None, models, None, False, 1.0, blank)) == 0.0


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_blank_masks_with_weight_zero_train_nothing(weight, tmp_path, tiny_models):
    ds = _masked_dataset(tmp_path / "ds", 0)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", ds, tiny_models["base"], 2) + [
        f"data.mask_weight={weight}", "train.weight_decay=0", "data.random_flip=true"])
    result = Trainer(cfg).run()
    lora = load_file(str(tmp_path / "run" / "pytorch_lora_weights.safetensors"))
    b = [v for k, v in lora.items() if "lora_B" in k or "lora.up" in k]
    assert b
    if weight == 0.0:  # zero loss, zero gradient: lora_B keeps its zero start
        assert result.loss_history == [0.0, 0.0]
        assert all(float(v.abs().max()) == 0.0 for v in b)
    else:
        assert any(float(v.abs().max()) > 0 for v in b)


def test_mask_weight_without_masks_is_one_sentence(tmp_path, tiny_models):
    ds = make_dataset(tmp_path / "ds", n=1)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", ds, tiny_models["base"], 1) + [
        "data.mask_weight=0.3"])
    with pytest.raises(ConfigError, match="no face masks"):
        Trainer(cfg).run()


def test_bucket_sizes_follow_sdxl():
    assert bucket_sizes(1024) == [(1536, 640), (1344, 768), (1216, 832), (1152, 896), (1024, 1024),
                                  (896, 1152), (832, 1216), (768, 1344), (640, 1536)]
    assert all(h % 64 == 0 and w % 64 == 0 for h, w in bucket_sizes(1024))
    assert (64, 64) in bucket_sizes(64) and len(set(bucket_sizes(64))) > 3
    s = BucketBatchSampler([(80, 64), (64, 64), (48, 80)], 6, 2, seed=1)
    for epoch in (0, 1):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for _, i in b) == list(range(6))
        assert all(len({i % 3 for _, i in b}) == 1 for b in batches)  # one bucket per batch
        assert batches == s.batches(epoch)


def test_mixed_aspect_photos_train_in_three_buckets(tmp_path, tiny_models, monkeypatch):
    from diffusers import UNet2DConditionModel

    ds = make_dataset(tmp_path / "ds", n=6)
    shapes = {0: (72, 96), 1: (80, 80), 2: (128, 72)}  # (w, h): 3:4, 1:1, 16:9
    for i in range(6):
        p = ds / "images" / f"{i:04d}.png"
        Image.open(p).convert("RGB").resize(shapes[i % 3]).save(p)
    seen = []
    forward = UNet2DConditionModel.forward

    def spy(self, sample, *a, **kw):
        seen.append((tuple(sample.shape[-2:]), kw["added_cond_kwargs"]["time_ids"].clone()))
        return forward(self, sample, *a, **kw)

    monkeypatch.setattr(UNet2DConditionModel, "forward", spy)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", ds, tiny_models["base"], 3) + [
        "data.buckets=true", "train.batch_size=2"])
    assert Trainer(cfg).run().status == "finished"
    assert len(seen) == 3
    assert {hw for hw, _ in seen} == {(10, 8), (8, 8), (6, 10)}  # latents of 80x64, 64x64, 48x80
    for (h, w), ids in seen:
        assert ids.shape == (2, 6)
        assert ids[:, 4].tolist() == [h * 8] * 2 and ids[:, 5].tolist() == [w * 8] * 2
        orig = {(int(a), int(b)) for a, b in ids[:, :2].tolist()}
        assert len(orig) == 1  # both photos of the batch have the bucket's shape


def test_preparation_saves_a_mask_per_face_crop(tmp_path, tiny_models):
    import io

    import dataset_photos as dp

    from studio.dataset.captioners import get_captioner
    from studio.dataset.faces import HaarDetector
    from studio.dataset.pipeline import prepare_dataset

    buf = io.BytesIO()
    dp.astronaut().save(buf, format="PNG")
    out = tmp_path / "ds"
    prepare_dataset([("astronaut.png", buf.getvalue())], out, trigger="tok", class_word="person",
                    framing="head-and-shoulders", detector=HaarDetector(),
                    captioner=get_captioner("blip", str(tiny_models["captioner"]),
                                            max_new_tokens=4, num_beams=1))
    mask_path = store.image_mask(out, "0001.png")
    assert mask_path is not None
    with Image.open(mask_path) as m, Image.open(out / store.IMAGES / "0001.png") as crop:
        assert m.mode == "L" and m.size == crop.size
        arr = np.asarray(m)
    assert arr[arr.shape[0] // 2 - arr.shape[0] // 10, arr.shape[1] // 2] > 200  # the face
    assert arr[-1, 0] < 30 and arr[-1, -1] < 30  # the shoulders' corners are outside
