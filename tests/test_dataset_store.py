"""The dataset folder's one owner: one list (registry + disk), one hash, captioner registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dataset_photos as dp
import pytest
from PIL import Image

from studio.dataset import DatasetError, store
from studio.dataset.blip import BlipCaptioner
from studio.dataset.captioners import CAPTIONERS, Captioner, get_captioner
from studio.dataset.faces import HaarDetector
from studio.dataset.pipeline import prepare_dataset
from studio.dataset.sources import load_dataset

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a photo of TOK person, smiling", "a photo of TOK person, in a hat"]


def _entries(n: int = 2) -> list[store.Entry]:
    colours = ["red", "green", "blue"]
    return [store.Entry(f"{i + 1:04d}.png", Image.new("RGB", (32, 32), colours[i]),
                        Image.new("RGB", (48, 40), colours[i]), CAPTIONS[i % 2], f"p{i}.jpg")
            for i in range(n)]


def _write(out: Path, workspace=None, **meta) -> store.DatasetInfo:
    return store.write_dataset(out, _entries(), {"trigger": "TOK", "class_word": "person", **meta},
                               {}, workspace=workspace)


# ---- one list ------------------------------------------------------------------------------
def test_cli_prepared_folder_is_listed_and_a_deleted_one_disappears(workspace, tiny_models,
                                                                    tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    dp.save(dp.astronaut(), src / "me.jpg")
    out = workspace.datasets_dir / "x"
    env = dict(os.environ, STUDIO_HOME=str(tmp_path / "elsewhere"), HF_HUB_OFFLINE="1",
               STUDIO_DEVICE="cpu")  # prepared with another home: not in this registry
    p = subprocess.run([sys.executable, "-m", "studio", "prepare", str(src), "--out", str(out),
                        "--detector", "haar", "--captioner", str(tiny_models["captioner"]),
                        "--trigger", "ohwx", "--class-word", "woman"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert workspace.registered("datasets") == []
    rows = store.list_datasets(workspace)
    assert [(r["name"], Path(r["path"])) for r in rows] == [("x", out)]
    assert {k: rows[0]["info"][k] for k in ("count", "trigger", "class_word")} == \
        {"count": 1, "trigger": "ohwx", "class_word": "woman"}
    assert rows[0]["info"]["hash"] == store.dataset_hash(out)
    shutil.rmtree(out)
    assert store.list_datasets(workspace) == []


def test_registered_rows_follow_the_disk_newest_first(workspace, tmp_path):
    outside = _write(tmp_path / "outside", workspace=workspace, name="Far away")
    time.sleep(0.01)
    inside = _write(workspace.datasets_dir / "near", workspace=workspace)
    time.sleep(0.01)
    _write(workspace.datasets_dir / "copied")  # not registered
    (workspace.datasets_dir / "not-a-dataset").mkdir()
    (workspace.datasets_dir / ".near.tmp-1234").mkdir()
    rows = store.list_datasets(workspace)
    assert [r["name"] for r in rows] == ["copied", "near", "Far-away"]
    assert Path(rows[2]["path"]) == outside.path and rows[2]["info"]["count"] == 2
    # A caption edit made without the workspace still shows (info is read from the disk).
    store.save_captions(inside.path, {}, drop=["0002.png"])
    assert [(r["name"], r["info"]["count"]) for r in store.list_datasets(workspace)] == \
        [("near", 1), ("copied", 2), ("Far-away", 2)]
    shutil.rmtree(outside.path)
    assert [r["name"] for r in store.list_datasets(workspace)] == ["near", "copied"]
    assert len(workspace.registered("datasets")) == 2  # the registry row is only hidden


# ---- one hash ------------------------------------------------------------------------------
def test_every_source_of_the_same_images_has_the_same_hash(tmp_path):
    ds = _write(tmp_path / "prepared")
    assert ds.info["hash"] == store.dataset_hash(ds.path)
    assert load_dataset(str(ds.path)).hash == ds.info["hash"]
    # The crops as a plain imagefolder, and as images with .txt captions.
    folder = shutil.copytree(ds.path / "images", tmp_path / "imagefolder")
    assert load_dataset(str(folder)).hash == ds.info["hash"]
    txt = tmp_path / "txt"
    txt.mkdir()
    for e in ds.entries:
        shutil.copy(ds.path / "images" / e["file_name"], txt / e["file_name"])
        (txt / e["file_name"]).with_suffix(".txt").write_text(e["text"])
    assert load_dataset(str(txt)).hash == ds.info["hash"]
    (txt / "0001.txt").write_text("another caption")
    assert load_dataset(str(txt)).hash != ds.info["hash"]
    # A prepared dataset keeps its stored hash; without one, the same function computes it.
    info = json.loads((ds.path / "dataset.json").read_text())
    (ds.path / "dataset.json").write_text(json.dumps({**info, "hash": "stored"}))
    assert load_dataset(str(ds.path)).hash == "stored"
    del info["hash"]
    (ds.path / "dataset.json").write_text(json.dumps(info))
    assert load_dataset(str(ds.path)).hash == store.dataset_hash(ds.path)


def test_prepared_datasets_are_read_through_the_store(tmp_path):
    ds = _write(tmp_path / "prepared")
    loaded = load_dataset(str(ds.path))
    assert [e.caption for e in loaded.examples] == CAPTIONS
    assert loaded.trigger == "TOK" and loaded.name == "prepared"
    assert load_dataset(str(ds.path), caption_column=None).examples[0].caption is None
    meta = ds.path / "images" / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "../dataset.json", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="outside the dataset"):
        load_dataset(str(ds.path))
    meta.write_text(json.dumps({"file_name": "9999.png", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="9999.png does not exist"):
        load_dataset(str(ds.path))


# ---- captioner registry --------------------------------------------------------------------
def test_captioner_registry(monkeypatch, tmp_path):
    blip = get_captioner("blip", "some/model", num_beams=1)
    assert isinstance(blip, BlipCaptioner) and isinstance(blip, Captioner)
    assert blip.source == "some/model" and blip.num_beams == 1
    with pytest.raises(DatasetError, match="Unknown captioner 'nope'; use blip"):
        get_captioner("nope")

    class Fixed:
        name = "fixed"

        def __init__(self, source=None):
            self.source = source

        def caption(self, images, batch_size=4, progress=None):
            return [f"words from {self.source}"] * len(images)

    monkeypatch.setitem(CAPTIONERS, "fixed", Fixed)  # a second kind: one registry line
    src = tmp_path / "me.jpg"
    dp.save(dp.astronaut(), src)
    result = prepare_dataset([src], tmp_path / "out", detector=HaarDetector(),
                             captioner="m1", captioner_kind="fixed")
    assert result.dataset.entries[0]["text"] == "a photo of TOK person, words from m1"
    assert result.dataset.info["captioner"] == "m1"
