"""Saving generated images with their full parameters, listing them, exporting them as a zip.

Each PNG carries two text chunks:
  * ``parameters``: the A1111 text other tools (A1111, ComfyUI, Civitai, Fooocus) read;
  * ``studio``: the same parameters as JSON, read back by this app.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from studio.errors import StudioError
from studio.fsutil import atomic_write, atomic_write_bytes

JSON_KEY = "studio"
A1111_KEY = "parameters"


def a1111_parameters(p: dict[str, Any]) -> str:
    """The A1111 ``parameters`` text for one image."""
    lines = [p.get("prompt", "")]
    if p.get("negative_prompt"):
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    fields = [
        ("Steps", p.get("steps")), ("Sampler", p.get("scheduler")),
        ("CFG scale", p.get("guidance")), ("Seed", p.get("seed")),
        ("Size", f"{p.get('width')}x{p.get('height')}" if p.get("width") else None),
        ("Model", p.get("base_model")),
    ]
    if p.get("lora"):
        fields.append(("Lora", f"{p['lora']}:{p.get('lora_scale', 1.0)}"))
    if p.get("refiner"):
        fields += [("Refiner", p["refiner"]), ("Refiner switch at", p.get("refiner_switch"))]
    fields.append(("Version", f"sdxl-lora-studio {p.get('studio_version', '')}".strip()))
    lines.append(", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields if v not in (None, "")))
    return "\n".join(lines)


def _a1111_value(v: Any) -> str:
    """Quote a value the way A1111 does (JSON string when it holds ',', ':' or a newline)."""
    s = str(v)
    return json.dumps(s) if any(c in s for c in ",:\n") else s


def png_bytes(image: Image.Image, params: dict[str, Any]) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, a1111_parameters(params))
    info.add_itxt(JSON_KEY, json.dumps(params, sort_keys=True, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_params(path: str | Path) -> dict[str, Any]:
    """The parameters embedded in a PNG written by :func:`png_bytes` ({} if none)."""
    with Image.open(path) as im:
        text = im.text.get(JSON_KEY) if hasattr(im, "text") else None
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


class GalleryError(StudioError, ValueError):
    """A gallery image that cannot be found or removed (one sentence)."""


@dataclass
class GalleryItem:
    path: Path
    params: dict[str, Any]


class Gallery:
    """A folder of PNGs. The folder is the source of truth: files copied in appear too."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, image: Image.Image, params: dict[str, Any]) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{params.get('seed', 'x')}-{uuid.uuid4().hex[:6]}.png"
        path = self.folder / name
        atomic_write_bytes(path, png_bytes(image, params))
        return path

    def items(self, limit: int | None = None) -> list[GalleryItem]:
        files = sorted(self.folder.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name),
                       reverse=True)
        if limit:
            files = files[:limit]
        return [GalleryItem(p, read_params(p)) for p in files]

    def delete(self, names: list[str]) -> int:
        """Delete the images named ``names``; only names this gallery lists are accepted (a
        name is never joined into a path). Returns how many were deleted."""
        listed = {p.name: p for p in self.folder.glob("*.png")}
        names = [str(n) for n in names or []]
        if not names:
            raise GalleryError("Select an image in the gallery first.")
        unknown = [n for n in names if n not in listed]
        if unknown:
            raise GalleryError(f"The image {unknown[0]!r} is not in the gallery (any more); "
                               "refresh the gallery.")
        for n in dict.fromkeys(names):
            listed[n].unlink(missing_ok=True)
        return len(set(names))

    def export_zip(self, out: str | Path, paths: list[Path] | None = None) -> Path:
        """One zip: the images plus ``metadata.csv`` and ``metadata.jsonl`` (a row per image)."""
        items = [GalleryItem(Path(p), read_params(p)) for p in paths] if paths else self.items()
        if not items:
            raise ValueError("The gallery is empty: generate an image first.")
        columns = ["file_name", "prompt", "negative_prompt", "seed", "steps", "guidance",
                   "scheduler", "width", "height", "base_model", "lora", "lora_scale", "refiner",
                   "refiner_switch", "created"]

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                csv_buf = io.StringIO()
                writer = csv.DictWriter(csv_buf, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                jsonl = []
                for it in items:
                    zf.write(it.path, f"images/{it.path.name}")
                    row = {"file_name": f"images/{it.path.name}", **it.params}
                    writer.writerow(row)
                    jsonl.append(json.dumps(row, sort_keys=True, default=str))
                zf.writestr("metadata.csv", csv_buf.getvalue())
                zf.writestr("metadata.jsonl", "\n".join(jsonl) + "\n")

        return atomic_write(out, write)
