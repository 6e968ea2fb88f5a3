"""The Dataset tab's face-mask panel: each crop with its face mask over it (the region the
face-weighted loss, ``data.mask_weight``, weighs fully), and a switch per image to turn a mask
off (a mask that caught the wrong face, or a photo where the whole image matters). The panel
follows the tab's current dataset (a processed one or an opened one); switching writes
:func:`studio.dataset.store.set_mask_on` at once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageOps

from studio.dataset import store
from studio.errors import StudioError

log = logging.getLogger(__name__)

THUMB = 256
TINT = (255, 64, 64)  # the mask's colour over the crop


def overlay(crop: Path, mask: Path, on: bool) -> Image.Image:
    """The crop with its mask tinted over it (a switched-off mask is shown grey and faint)."""
    with Image.open(crop) as im:
        base = ImageOps.contain(im.convert("RGB"), (THUMB, THUMB))
    with Image.open(mask) as m:
        alpha = m.convert("L").resize(base.size)
    strength = 0.55 if on else 0.2
    colour = Image.new("RGB", base.size, TINT if on else (128, 128, 128))
    return Image.composite(colour, base, alpha.point(lambda v: int(v * strength)))


def mask_names(folder: Path) -> list[str]:
    """The dataset's images that have a face mask, in dataset order."""
    ds = store.open_dataset(folder)
    return [e["file_name"] for e in ds.entries if store.mask_file(folder, e["file_name"])]


def mask_view(current: str | None) -> tuple[list, Any, str]:
    """(gallery of overlays, checkbox group of the masks switched on, status)."""
    if not current or not Path(current).is_dir():
        return [], gr.update(choices=[], value=[]), ""
    folder = Path(current)
    try:
        names = mask_names(folder)
    except StudioError as exc:
        return [], gr.update(choices=[], value=[]), f"⚠️ {exc}"
    if not names:
        return [], gr.update(choices=[], value=[]), (
            "No face masks: the crops have no face window (no face found, or the full framing).")
    off = store.masks_off(folder)
    gallery = [(overlay(folder / store.IMAGES / n, store.mask_file(folder, n), n not in off),
                f"{n}: mask {'off' if n in off else 'on'}") for n in names]
    on = [n for n in names if n not in off]
    return gallery, gr.update(choices=names, value=on), (
        f"{len(on)} of {len(names)} masks on; the loss outside a mask is weighted by "
        "`data.mask_weight` (1.0 turns face weighting off).")


def apply_masks(current: str | None, on: list[str] | None) -> tuple[list, Any, str]:
    """Switch each mask on or off as the checkboxes say; returns the refreshed view."""
    if not current or not Path(current).is_dir():
        return [], gr.update(), "⚠️ Process photos or open a dataset first."
    folder, on = Path(current), set(on or [])
    try:
        for name in mask_names(folder):
            store.set_mask_on(folder, name, name in on)
    except StudioError as exc:
        return [], gr.update(), f"⚠️ {exc}"
    return mask_view(current)


def build(current: gr.State) -> dict[str, Any]:
    """The panel, following the tab's ``current`` dataset folder."""
    w: dict[str, Any] = {}
    with gr.Accordion("Face masks (face-weighted loss)", open=False, elem_id="ds-masks"):
        w["gallery"] = gr.Gallery(label="Crop with its face mask", columns=4, height=300,
                                  object_fit="contain", elem_id="ds-mask-gallery")
        w["on"] = gr.CheckboxGroup(label="Masks switched on", elem_id="ds-mask-on")
        with gr.Row():
            w["apply"] = gr.Button("Apply mask switches", size="sm", elem_id="ds-mask-apply")
            w["refresh"] = gr.Button("Show masks", size="sm", elem_id="ds-mask-refresh")
        w["status"] = gr.Markdown(elem_id="ds-mask-status")
    view = [w["gallery"], w["on"], w["status"]]
    current.change(mask_view, [current], view)
    w["refresh"].click(mask_view, [current], view)
    w["apply"].click(apply_masks, [current, w["on"]], view)
    return w
