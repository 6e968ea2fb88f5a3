"""The Generate tab's lists and gallery actions: the LoRA list (the workspace's trained runs),
the gallery, the selected image, "Reuse this image's settings" and deleting images.

The gallery image a click selects is kept by its file name (a State), so a gallery that changed
since never makes an action act on another image; deleting goes through
:meth:`studio.generate.gallery.Gallery.delete`, which accepts only names it lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from studio.generate.gallery import Gallery
from studio.generate.request import LIMITS
from studio.generate.schedulers import SCHEDULERS
from studio.ui.context import AppContext

NO_LORA = "(none)"
GALLERY_LIMIT = 200
# The request inputs "Reuse this image's settings" fills, in this order.
REUSED = ("prompt", "negative", "seed", "lora", "lora_scale", "scheduler", "steps", "guidance",
          "width", "height", "use_refiner", "refiner_switch")


def gallery_value(gallery: Gallery) -> list[tuple[str, str]]:
    return [(str(it.path), (it.params.get("prompt") or "")[:80])
            for it in gallery.items(limit=GALLERY_LIMIT)]


def lora_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """The LoRA list: "(none)", then each trained run of the workspace (label: its name, value:
    its LoRA file), newest first."""
    return [(NO_LORA, NO_LORA), *ctx.lora_choices()]


def lora_update(ctx: AppContext) -> Any:
    """The LoRA list read again; the value (chosen or typed) stays."""
    return gr.update(choices=lora_choices(ctx))


def selected_name(gallery: Gallery, evt: gr.SelectData) -> str | None:
    """The file name of the gallery image a click selected (by its path when Gradio gives it,
    else by its position in the list as shown)."""
    value = evt.value if isinstance(evt.value, dict) else {}
    image = value.get("image") if isinstance(value.get("image"), dict) else value
    listed = [it.path.name for it in gallery.items(limit=GALLERY_LIMIT)]
    for key in ("orig_name", "path", "url"):
        name = Path(str(image.get(key) or "")).name
        if name in listed:
            return name
    idx = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return listed[idx] if isinstance(idx, int) and 0 <= idx < len(listed) else None


def image_params(gallery: Gallery, name: str | None) -> dict[str, Any]:
    """The parameters embedded in the gallery image ``name`` ({} when it is gone)."""
    match = next((it for it in gallery.items() if it.path.name == name), None) if name else None
    return dict(match.params) if match is not None else {}


def _number(params: dict, key: str, kind=float) -> Any:
    """The image's value of ``key`` when it is within the request's limits, else no change."""
    value = params.get(key)
    try:
        return kind(value) if value is not None and LIMITS[key].ok(value) else gr.update()
    except (TypeError, ValueError):
        return gr.update()


def reuse_settings(gallery: Gallery, name: str | None) -> tuple:
    """Updates of :data:`REUSED` from the image's metadata, then the status text."""
    p = image_params(gallery, name)
    if not p:
        why = "Select an image in the gallery first." if not name else \
            f"{name} holds no settings of this studio."
        return (*(gr.update() for _ in REUSED), f"⚠️ {why}")
    refiner = bool(p.get("refiner"))
    values = {
        "prompt": str(p.get("prompt") or ""), "negative": str(p.get("negative_prompt") or ""),
        "seed": _number(p, "seed", int), "lora": str(p.get("lora") or NO_LORA),
        "lora_scale": _number(p, "lora_scale") if p.get("lora") else gr.update(),
        "scheduler": p["scheduler"] if p.get("scheduler") in SCHEDULERS else gr.update(),
        "steps": _number(p, "steps", int), "guidance": _number(p, "guidance"),
        "width": _number(p, "width", int), "height": _number(p, "height", int),
        "use_refiner": refiner,
        "refiner_switch": _number(p, "refiner_switch") if refiner else gr.update(),
    }
    return (*(values[k] for k in REUSED), f"Settings of {name} filled in (seed {p.get('seed')}).")


def ask_delete(name: str | None) -> tuple[list[str] | None, str]:
    if not name:
        return None, "⚠️ Select an image in the gallery first."
    return [name], f"Delete {name} from the gallery? This cannot be undone."


def delete_images(gallery: Gallery, names: list[str] | None) -> tuple:
    """(gallery, selected, metadata, status) after deleting ``names``."""
    n = gallery.delete(list(names or []))
    return gallery_value(gallery), None, None, f"Deleted {n} image(s)."
