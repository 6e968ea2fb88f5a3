"""The on-disk dataset (see the dataset contract in the README):

    DATASET/images/0001.png ...          1024x1024 crops
    DATASET/images/metadata.jsonl        {"file_name": "0001.png", "text": "a photo of TOK person, ..."}
    DATASET/originals/0001.png ...       the normalised originals (no EXIF/GPS), same names
    DATASET/masks/0001.png ...           face + hair mask of each crop (feathered, L mode), same
                                         names; masks/off.json lists the masks switched off
    DATASET/dataset.json                 name, trigger, class_word, template, hash, created, count, framing
    DATASET/report.json                  the quality report
    DATASET/identity.json                face embeddings of the crops, valid for one dataset hash

This module is the only code that reads or writes that layout: training reads prepared datasets
through :func:`open_dataset`, :func:`content_hash` is the one dataset hash, and
:func:`list_datasets` is the one list (the workspace registry reconciled with the disk).

Datasets are written into a temporary sibling folder and renamed into place, so a crash never
leaves half a dataset; caption edits rewrite metadata.jsonl atomically and refresh the hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio.dataset import DatasetError
from studio.fsutil import atomic_write_json, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

IMAGES, ORIGINALS, METADATA = "images", "originals", "metadata.jsonl"
MASKS, MASKS_OFF = "masks", "off.json"  # masks/off.json: file names whose mask is off
INFO, REPORT = "dataset.json", "report.json"
IDENTITY = "identity.json"
"""Face embeddings of the crops (studio.dataset.identity); stamped with the dataset hash."""
CAPTION_COLUMN = "text"
"""The caption column of metadata.jsonl (and the key of :attr:`DatasetInfo.entries`)."""
LISTED = ("count", "trigger", "class_word", "hash", "framing")
"""The dataset.json keys a dataset list row carries in its ``info``."""


@dataclass
class Entry:
    """One image of a dataset being written."""

    file_name: str
    crop: Image.Image
    original: Image.Image
    caption: str
    source: str = ""
    mask: Image.Image | None = None  # the face mask of the crop (studio.dataset.masks)


@dataclass
class DatasetInfo:
    path: Path
    info: dict[str, Any]
    entries: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.path.name)

    def image_path(self, file_name: str) -> Path:
        """The crop ``images/FILE_NAME``; a name outside the folder or a missing file is an
        error."""
        images = (self.path / IMAGES).resolve()
        path = (images / file_name).resolve()
        if images not in path.parents:
            raise DatasetError(f"{images / METADATA}: file_name {file_name!r} points outside the "
                               "dataset.")
        if not path.is_file():
            raise DatasetError(f"{images / METADATA}: the image {file_name} does not exist.")
        return path


def _metadata_text(entries: Iterable[dict[str, str]]) -> str:
    return "".join(json.dumps({"file_name": e["file_name"], "text": e["text"]},
                              ensure_ascii=False) + "\n" for e in entries)


def content_hash(items: Iterable[tuple[str, Any, str | None]]) -> str:
    """The one dataset hash: SHA-256 over (name, SHA-256 of the image, caption) triples in name
    order. An image is a file path, raw bytes or an in-memory PIL image (hashed by its pixels).
    Prepared datasets store it in dataset.json; training computes it for any other source."""
    h = hashlib.sha256()
    for name, image, caption in sorted(items, key=lambda t: t[0]):
        h.update(name.encode())
        h.update(hashlib.sha256(_image_bytes(image)).digest())
        h.update((caption or "").encode("utf-8"))
    return h.hexdigest()


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    return image.tobytes()


def dataset_hash(folder: str | Path) -> str:
    """:func:`content_hash` of a dataset folder: every crop and its caption."""
    images = Path(folder) / IMAGES
    return content_hash((e["file_name"], images / e["file_name"], e["text"])
                        for e in read_jsonl(images / METADATA))


def is_dataset(folder: str | Path) -> bool:
    return (Path(folder) / INFO).is_file()


def write_dataset(out_dir: str | Path, entries: list[Entry], meta: dict[str, Any],
                  report: dict[str, Any], overwrite: bool = False, workspace=None,
                  identity: dict[str, Any] | None = None) -> DatasetInfo:
    """Write a complete dataset atomically (temp folder, then rename) and register it;
    ``identity`` (face embeddings of the crops) is stored stamped with the new hash."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not (overwrite and is_dataset(out)):
        if not out.is_dir() or any(out.iterdir()):
            hint = "use --force (or Save again to replace it)" if is_dataset(out) else \
                "choose an empty or new folder"
            raise DatasetError(f"{out} already exists; {hint}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / IMAGES).mkdir(parents=True)
        (tmp / ORIGINALS).mkdir()
        for e in entries:
            e.crop.save(tmp / IMAGES / e.file_name, format="PNG", compress_level=4)
            e.original.save(tmp / ORIGINALS / e.file_name, format="PNG", compress_level=4)
            if e.mask is not None:
                (tmp / MASKS).mkdir(exist_ok=True)
                e.mask.save(tmp / MASKS / e.file_name, format="PNG", compress_level=4)
        (tmp / IMAGES / METADATA).write_text(
            _metadata_text({"file_name": e.file_name, "text": e.caption} for e in entries),
            encoding="utf-8")
        info = dict(meta)
        info.update({"name": meta.get("name") or out.name, "count": len(entries),
                     "created": meta.get("created") or time.time(), "updated": time.time(),
                     "hash": dataset_hash(tmp),
                     "sources": {e.file_name: e.source for e in entries}})
        atomic_write_json(tmp / INFO, info)
        atomic_write_json(tmp / REPORT, report)
        if identity is not None:
            atomic_write_json(tmp / IDENTITY, {**identity, "hash": info["hash"]})
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ds = open_dataset(out)
    if workspace is not None:
        register(workspace, ds)
    return ds


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing dataset is moved aside first, then deleted."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def register(workspace, ds: DatasetInfo) -> None:
    from studio.workspace import slugify

    workspace.register_dataset(slugify(ds.name, "dataset"), ds.path,
                               {k: ds.info.get(k) for k in LISTED})


def dataset_identity(folder: str | Path) -> tuple[str | None, str | None]:
    """(trigger, class word) of a prepared dataset; (None, None) when it is not one."""
    try:
        info = open_dataset(folder).info
    except DatasetError:
        return None, None
    return info.get("trigger") or None, info.get("class_word") or None


def open_dataset(folder: str | Path) -> DatasetInfo:
    """Read a dataset folder (dataset.json, captions, report)."""
    folder = Path(folder).expanduser()
    if not is_dataset(folder):
        raise DatasetError(f"{folder} is not a prepared dataset (no {INFO}); prepare one first.")
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
        report = json.loads((folder / REPORT).read_text(encoding="utf-8")) \
            if (folder / REPORT).is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"The dataset {folder} is damaged ({exc}); prepare it again.") from None
    entries = [{"file_name": e["file_name"], "text": e.get("text", "")}
               for e in read_jsonl(folder / IMAGES / METADATA) if "file_name" in e]
    return DatasetInfo(folder.resolve(), info, entries, report)


def read_identity(folder: str | Path) -> dict[str, Any] | None:
    """The stored face embeddings when they belong to the dataset's current hash, else None
    (missing, unreadable, or written before images or captions changed)."""
    folder = Path(folder)
    info = _read_info(folder)
    try:
        data = json.loads((folder / IDENTITY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info is None or not isinstance(data, dict) or data.get("hash") != info[0].get("hash"):
        return None
    return data


def write_identity(folder: str | Path, identity: dict[str, Any]) -> None:
    """Store face embeddings for the dataset's current hash."""
    ds = open_dataset(folder)
    atomic_write_json(ds.path / IDENTITY, {**identity, "hash": ds.info.get("hash")})


def save_captions(folder: str | Path, captions: dict[str, str], drop: Iterable[str] = (),
                  workspace=None) -> DatasetInfo:
    """Write edited captions (and drop images) back into a dataset, atomically; refresh the
    hash and count. Unknown file names are an error."""
    ds = open_dataset(folder)
    known = {e["file_name"] for e in ds.entries}
    drop = set(drop)
    unknown = sorted((set(captions) | drop) - known)
    if unknown:
        raise DatasetError(f"{', '.join(unknown[:3])} is not in the dataset {ds.name}; reload it.")
    entries = [{"file_name": e["file_name"], "text": str(captions.get(e["file_name"], e["text"]))
                .strip()} for e in ds.entries if e["file_name"] not in drop]
    if not entries:
        raise DatasetError("Every image would be dropped; keep at least one.")
    atomic_write_text(ds.path / IMAGES / METADATA, _metadata_text(entries))
    for name in drop:
        for sub in (IMAGES, ORIGINALS, MASKS):
            (ds.path / sub / name).unlink(missing_ok=True)
    info = dict(ds.info)
    info.update({"hash": dataset_hash(ds.path), "count": len(entries), "updated": time.time()})
    if drop and isinstance(info.get("sources"), dict):
        info["sources"] = {k: v for k, v in info["sources"].items() if k not in drop}
    atomic_write_json(ds.path / INFO, info)
    out = open_dataset(ds.path)
    if workspace is not None:
        register(workspace, out)
    return out


def mask_file(folder: str | Path, file_name: str) -> Path | None:
    """The face mask of ``images/FILE_NAME`` (switched on or off), None when it has none."""
    path = Path(folder) / MASKS / Path(file_name).name
    return path if path.is_file() else None


def masks_off(folder: str | Path) -> set[str]:
    """The file names whose face mask the user switched off."""
    try:
        data = json.loads((Path(folder) / MASKS / MASKS_OFF).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {str(n) for n in data} if isinstance(data, list) else set()


def image_mask(folder: str | Path, file_name: str) -> Path | None:
    """The face mask training uses for ``images/FILE_NAME``: None when it has none or the user
    switched it off."""
    return None if Path(file_name).name in masks_off(folder) else mask_file(folder, file_name)


def set_mask_on(folder: str | Path, file_name: str, on: bool) -> set[str]:
    """Switch the face mask of one image on or off; returns the names switched off."""
    if mask_file(folder, file_name) is None:
        raise DatasetError(f"The image {file_name} has no face mask.")
    off = masks_off(folder)
    off = (off - {file_name}) if on else (off | {file_name})
    atomic_write_json(Path(folder) / MASKS / MASKS_OFF, sorted(off))
    return off


def publish(src: str | Path, dest: str | Path, name: str | None = None, overwrite: bool = False,
            workspace=None) -> DatasetInfo:
    """Move a complete dataset folder (e.g. a staged one) to ``dest`` in one rename."""
    src, dest = Path(src).resolve(), Path(dest).expanduser().resolve()
    ds = open_dataset(src)
    if dest.exists() and (not overwrite or not is_dataset(dest)):
        raise DatasetError(f"A dataset named {dest.name!r} already exists; choose another name.")
    info = dict(ds.info)
    info.update({"name": name or dest.name, "updated": time.time()})
    atomic_write_json(src / INFO, info)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _swap_in(src, dest)
    except OSError:  # another file system: copy next to the target, then rename
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copytree(src, tmp)
        _swap_in(tmp, dest)
        shutil.rmtree(src, ignore_errors=True)
    out = open_dataset(dest)
    if workspace is not None:
        register(workspace, out)
    return out


def delete_dataset(workspace, name: str, in_use: Iterable[str | Path] = ()) -> Path:
    """Delete the dataset ``name`` of ``workspace``: only a name :func:`list_datasets` lists is
    accepted (never a path), only a folder of the workspace's datasets folder, and never one
    whose folder is in ``in_use`` (the datasets of queued
    or running trainings). The folder is renamed out of the list first, then removed. Returns
    the folder it was."""
    match = next((d for d in list_datasets(workspace) if d["name"] == name), None)
    if match is None:
        raise DatasetError(f"There is no dataset named {name!r}; refresh the list.")
    path = Path(match["path"]).resolve()
    if path.parent != workspace.datasets_dir.resolve():
        raise DatasetError(f"The dataset {name} lives outside the workspace's datasets folder; "
                           "it is only deleted there, by hand.")
    if path in {Path(p).resolve() for p in in_use}:
        raise DatasetError(f"The dataset {name} is used by a queued or running training; cancel "
                           "it first.")
    gone = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(path, gone)
    except OSError as exc:
        raise DatasetError(f"The dataset {name} could not be deleted ({exc.strerror}).") from None
    shutil.rmtree(gone, ignore_errors=True)
    return path


def list_datasets(workspace) -> list[dict[str, Any]]:
    """The one list of datasets: registered ones whose folder is still a dataset, plus dataset
    folders in the workspace nobody registered (e.g. copied in, or prepared with another
    STUDIO_HOME), newest first. Each row is {name, path, created, updated, info}; ``info`` is
    read from the folder's dataset.json, so it is what is on disk now."""
    rows: dict[Path, dict[str, Any]] = {}
    for row in workspace.registered("datasets"):  # newest registration first
        rows.setdefault(Path(row["path"]).resolve(),
                        {"name": row["name"], "path": row["path"], "created": row["created"]})
    root = workspace.datasets_dir
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not p.name.startswith("."):  # .NAME.tmp-* / .NAME.old-* are writes in progress
            rows.setdefault(p.resolve(), {"name": p.name, "path": str(p), "created": None})
    out = []
    for path, row in rows.items():
        found = _read_info(path)
        if found is None:  # the folder is gone or is not a dataset: not listed
            continue
        info, mtime = found
        updated = info.get("updated")
        row.update(info={k: info.get(k) for k in LISTED},
                   updated=float(updated) if isinstance(updated, (int, float)) else mtime)
        row["created"] = row["created"] or row["updated"]
        out.append(row)
    return sorted(out, key=lambda d: d["updated"], reverse=True)


def _read_info(folder: Path) -> tuple[dict[str, Any], float] | None:
    """(dataset.json, its mtime); None when it is gone or unreadable."""
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
        mtime = (folder / INFO).stat().st_mtime
    except (OSError, ValueError):
        return None
    return (info, mtime) if isinstance(info, dict) else None
