"""Where training images come from: any dataset a user can point training at.

- a prepared ``DATASET/`` (``images/`` + ``images/metadata.jsonl`` + ``dataset.json`` with the
  trigger and class word), read through :mod:`studio.dataset.store`, its owner,
- any imagefolder: a folder with ``metadata.jsonl`` (``file_name`` + caption column),
- a folder of images with same-name ``.txt`` captions (captions optional),
- a Hub dataset id (``datasets.load_dataset(id, split="train")`` with image/caption columns).

Every source gets the same hash (:func:`studio.dataset.store.content_hash`); a prepared dataset
keeps the one stored in its dataset.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.dataset import DatasetError, store

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


def _read_metadata(folder: Path, caption_column: str | None) -> list[tuple[str, Example]]:
    """(file_name, example) for each line of an imagefolder's metadata.jsonl."""
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
        out.append((name, Example(path, str(cap) if cap not in (None, "") else None)))
    return out


def _read_caption_folder(folder: Path) -> list[tuple[str, Example]]:
    """(file name, example) for each image of a folder, captioned by a same-name .txt."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            txt = p.with_suffix(".txt")
            cap = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
            out.append((p.name, Example(p, cap or None)))
    return out


def _load_prepared(root: Path, caption_column: str | None) -> LoadedDataset:
    """A prepared dataset, through its owner; its captions are the store's ``text`` column."""
    ds = store.open_dataset(root)
    use_text = caption_column == store.CAPTION_COLUMN
    examples = [Example(ds.image_path(e["file_name"]), (e["text"] or None) if use_text else None)
                for e in ds.entries]
    if not examples:
        raise _no_images(str(root))
    info = ds.info
    return LoadedDataset(examples, trigger=info.get("trigger"), class_word=info.get("class_word"),
                         hash=info.get("hash") or store.dataset_hash(root), name=ds.name,
                         info=info)


def _no_images(spec: str) -> DatasetError:
    return DatasetError(f"The dataset {spec} holds no images (expected images/ with "
                        "metadata.jsonl, an imagefolder, or images with .txt captions).")


def load_dataset(spec: str, image_column: str = "image", caption_column: str | None = "text"
                 ) -> LoadedDataset:
    """Load the dataset named by ``spec`` (see the module docs)."""
    if not spec:
        raise DatasetError("No dataset was given; pass --dataset DATASET_DIR.")
    from studio.models import looks_like_path

    root = Path(spec).expanduser()
    if not (root.exists() or looks_like_path(spec)):
        return _load_hub(spec, image_column, caption_column)
    if not root.is_dir():
        raise DatasetError(f"The dataset folder {spec} does not exist.")
    if store.is_dataset(root):
        return _load_prepared(root, caption_column)
    folder = root / "images" if (root / "images").is_dir() else root
    if (folder / "metadata.jsonl").is_file():
        named = _read_metadata(folder, caption_column)
    else:
        named = _read_caption_folder(folder)
    if not named:
        raise _no_images(spec)
    return LoadedDataset([ex for _, ex in named], name=root.name, hash=store.content_hash(
        (name, ex.source, ex.caption) for name, ex in named))


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
    fp = getattr(ds, "_fingerprint", None) or store.content_hash(
        (str(i), ex.source, ex.caption) for i, ex in enumerate(examples))
    return LoadedDataset(examples, hash=str(fp), name=spec)
