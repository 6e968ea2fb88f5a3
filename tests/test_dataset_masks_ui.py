"""The Dataset tab's face-mask panel (handlers, no browser): overlays of each mask on its crop,
and switching masks off and on per image."""

from __future__ import annotations

from PIL import Image

from studio.dataset import store
from studio.ui import dataset_masks


def _dataset(tmp_path):
    crop, orig = Image.new("RGB", (64, 64), (0, 0, 255)), Image.new("RGB", (80, 80))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    entries = [store.Entry("0001.png", crop, orig, "a", mask=mask),
               store.Entry("0002.png", crop, orig, "b", mask=mask),
               store.Entry("0003.png", crop, orig, "c")]
    return store.write_dataset(tmp_path / "ds", entries, {"trigger": "tok"}, {}).path


def test_the_panel_shows_each_mask_over_its_crop_and_switches_them(tmp_path):
    folder = _dataset(tmp_path)
    gallery, on, status = dataset_masks.mask_view(str(folder))
    assert [c for _, c in gallery] == ["0001.png: mask on", "0002.png: mask on"]
    assert on["choices"] == ["0001.png", "0002.png"] and on["value"] == ["0001.png", "0002.png"]
    img = gallery[0][0]
    r, g, b = img.getpixel((img.width // 2, img.height // 2))  # inside the mask: tinted red
    assert r > 100 and b < 200
    assert img.getpixel((2, 2)) == (0, 0, 255)  # outside: the crop itself
    assert "2 of 2 masks on" in status

    gallery, on, status = dataset_masks.apply_masks(str(folder), ["0002.png"])
    assert store.masks_off(folder) == {"0001.png"}
    assert store.image_mask(folder, "0001.png") is None
    assert on["value"] == ["0002.png"] and "1 of 2 masks on" in status
    assert gallery[0][1] == "0001.png: mask off"
    dataset_masks.apply_masks(str(folder), ["0001.png", "0002.png"])
    assert store.masks_off(folder) == set()


def test_no_dataset_or_no_masks_is_said(tmp_path):
    assert dataset_masks.mask_view(None)[0] == []
    crop, orig = Image.new("RGB", (64, 64)), Image.new("RGB", (80, 80))
    folder = store.write_dataset(tmp_path / "plain", [store.Entry("0001.png", crop, orig, "a")],
                                 {}, {}).path
    gallery, _, status = dataset_masks.mask_view(str(folder))
    assert gallery == [] and "No face masks" in status
