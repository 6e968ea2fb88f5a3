"""Where training images come from: any dataset a user can point training at.

- a prepared ``DATASET/`` (``images/`` + ``images/metadata.jsonl`` + ``dataset.json`` with the
  trigger and class word; see :mod:`studio.dataset.store`),
- any imagefolder: a folder with ``metadata.jsonl`` (``file_name`` + caption column),
- a folder of images with same-name ``.txt`` captions (captions optional),
- a Hub dataset id (``datasets.load_dataset(id, split="train")`` with image/caption columns).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.dataset import DatasetError

log = logging.getLogger(__name__)

def default_instance_prompt(trigger: str | None, class_word: str | None) -> str:
    """'a photo of TRIGGER CLASS': the prompt that names the subject when none is configured."""
    if not trigger:
        return f"a photo of TOK {class_word or 'person'}"
    if class_word and class_word not in str(trigger):
        return f"a photo of {trigger} {class_word}"
    return f"a photo of {trigger}"


IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class Example:
    """One training image: a path or an in-memory image, and its caption (may be None)."""

    source: Any
    caption: str | None

    def load(self):
        from PIL import Image, ImageOps

        try:
            img = self.source if not isinstance(self.source, (str, Path)) else Image.open(self.source)
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
        except Exception as exc:
            raise DatasetError(f"Cannot read the image {self.source}: {exc}.") from None


@dataclass
class LoadedDataset:
    examples: list[Example]
    trigger: str | None = None
    class_word: str | None = None
    hash: str | None = None
    name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _read_metadata(folder: Path, caption_column: str | None) -> list[Example]:
    out = []
    meta = folder / "metadata.jsonl"
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DatasetError(f"{meta} line {n} is not valid JSON.") from None
        name = row.get("file_name")
        if not isinstance(name, str):
            raise DatasetError(f"{meta} line {n} has no file_name.")
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents:
            raise DatasetError(f"{meta} line {n}: file_name {name!r} points outside the dataset.")
        if not path.is_file():
            raise DatasetError(f"{meta} line {n}: the image {name} does not exist.")
        cap = row.get(caption_column) if caption_column else None
        out.append(Example(path, str(cap) if cap not in (None, "") else None))
    return out


def _read_caption_folder(folder: Path) -> list[Example]:
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            txt = p.with_suffix(".txt")
            cap = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
            out.append(Example(p, cap or None))
    return out


def content_hash(examples: list[Example]) -> str:
    """sha256 over image bytes and captions (for datasets without dataset.json)."""
    h = hashlib.sha256()
    for ex in examples:
        if isinstance(ex.source, (str, Path)):
            h.update(Path(ex.source).read_bytes())
        else:
            h.update(ex.source.tobytes())
        h.update((ex.caption or "").encode())
    return h.hexdigest()


def load_dataset(spec: str, image_column: str = "image", caption_column: str | None = "text"
                 ) -> LoadedDataset:
    """Load the dataset named by ``spec`` (see the module docs)."""
    if not spec:
        raise DatasetError("No dataset was given; pass --dataset DATASET_DIR.")
    from studio.models import looks_like_path

    root = Path(spec).expanduser()
    if root.exists() or looks_like_path(spec):
        if not root.is_dir():
            raise DatasetError(f"The dataset folder {spec} does not exist.")
        info: dict[str, Any] = {}
        if (root / "dataset.json").is_file():
            try:
                info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                raise DatasetError(f"{root / 'dataset.json'} is not valid JSON.") from None
        folder = root / "images" if (root / "images").is_dir() else root
        if (folder / "metadata.jsonl").is_file():
            examples = _read_metadata(folder, caption_column)
        else:
            examples = _read_caption_folder(folder)
        if not examples:
            raise DatasetError(f"The dataset {spec} holds no images (expected images/ with "
                               "metadata.jsonl, an imagefolder, or images with .txt captions).")
        return LoadedDataset(examples, trigger=info.get("trigger"), class_word=info.get("class_word"),
                             hash=info.get("hash") or content_hash(examples),
                             name=info.get("name") or root.name, info=info)
    return _load_hub(spec, image_column, caption_column)


def _load_hub(spec: str, image_column: str, caption_column: str | None) -> LoadedDataset:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a requirement
        raise DatasetError("Loading a Hub dataset needs the 'datasets' package.") from None
    try:
        ds = datasets.load_dataset(spec, split="train")
    except Exception as exc:
        raise DatasetError(f"Could not load the Hub dataset {spec} (no network, not cached or not "
                           f"found: {str(exc).splitlines()[0][:150]}).") from None
    cols = ds.column_names
    if image_column not in cols:
        raise DatasetError(f"data.image_column: the dataset {spec} has no column {image_column!r} "
                           f"(columns: {', '.join(cols)}).")
    if caption_column and caption_column not in cols:
        raise DatasetError(f"data.caption_column: the dataset {spec} has no column "
                           f"{caption_column!r} (columns: {', '.join(cols)}).")
    examples = [Example(row[image_column], (row[caption_column] or None) if caption_column else None)
                for row in ds]
    fp = getattr(ds, "_fingerprint", None) or content_hash(examples)
    return LoadedDataset(examples, hash=str(fp), name=spec)
