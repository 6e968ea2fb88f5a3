"""The whole preparation: mixed batch, imagefolder layout, report, store, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dataset_photos as dp
import pytest
from PIL import Image

from studio.dataset import DatasetError, store
from studio.dataset.captioners import get_captioner
from studio.dataset.faces import HaarDetector
from studio.dataset.pipeline import prepare_dataset
from studio.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_models):
    """The acceptance batch through the Haar path and the tiny BLIP, into a workspace."""
    tmp = tmp_path_factory.mktemp("mixed")
    expect = dp.mixed_batch(tmp / "in")
    ws = Workspace(tmp / "home")
    steps = []
    result = prepare_dataset([tmp / "in"], ws.dataset_path("me"), trigger="TOK",
                             class_word="person", framing="head-and-shoulders",
                             detector=HaarDetector(),
                             captioner=get_captioner("blip", str(tiny_models["captioner"]), max_new_tokens=12,
                                                 num_beams=1),
                             progress=lambda f, m: steps.append((f, m)), workspace=ws)
    return expect, result, ws, steps


def test_mixed_batch_every_file_has_an_outcome(prepared):
    expect, result, _, steps = prepared
    got = {o.file: o for o in result.outcomes}
    assert set(got) == set(expect)
    for name, keyword in expect.items():
        o = got[name]
        if keyword == "accepted":
            assert o.status == "accepted", (name, o.reason)
        else:
            assert o.status == "rejected" and keyword in o.reason, (name, o.reason)
            assert name in o.line() and "\n" not in o.line()
    assert any("no face" in w for w in got["coffee.jpg"].warnings)
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0


def test_every_good_photo_is_in_the_dataset(prepared):
    expect, result, ws, _ = prepared
    ds = result.dataset
    good = sorted(n for n, k in expect.items() if k == "accepted")
    assert sorted(ds.info["sources"].values()) == good
    assert ds.info["count"] == len(good) == result.count
    for sub in ("images", "originals"):
        files = sorted(p.name for p in (ds.path / sub).glob("*.png"))
        assert files == sorted(ds.info["sources"])
    for p in (ds.path / "images").glob("*.png"):
        with Image.open(p) as im:
            assert im.size == (1024, 1024) and im.mode == "RGB"
    for p in (ds.path / "originals").glob("*.png"):
        with Image.open(p) as im:
            assert im.mode == "RGB" and not im.getexif() and min(im.size) >= 512
    assert [d["name"] for d in store.list_datasets(ws)] == ["me"]
    assert ws.registered("datasets")[0]["info"]["hash"] == ds.info["hash"]
    assert not [p for p in ds.path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_metadata_loads_with_imagefolder_and_captions_follow_the_template(prepared):
    from datasets import load_dataset

    _, result, _, _ = prepared
    info = json.loads((result.dataset.path / "dataset.json").read_text())
    for key in ("name", "trigger", "class_word", "template", "hash", "created", "count", "framing"):
        assert key in info
    data = load_dataset("imagefolder", data_dir=str(result.dataset.path / "images"), split="train")
    assert len(data) == result.count
    assert set(data.column_names) == {"image", "text"}
    for row in data:
        assert row["text"].startswith("a photo of TOK person,")
        assert "TOK" in row["text"].split()[3]
        assert row["image"].size == (1024, 1024)
    assert store.dataset_hash(result.dataset.path) == info["hash"]


def test_report_has_per_image_and_set_checks(prepared):
    _, result, _, _ = prepared
    report = json.loads((result.dataset.path / "report.json").read_text())
    assert report["set"]["count"] == result.count and report["set"]["recommended"] == [10, 20]
    assert any("10-20" in w for w in report["set"]["warnings"])  # 8 photos < 10
    by_source = {im["source"]: im for im in report["images"]}
    for im in report["images"]:
        for key in ("width", "height", "sharpness", "faces", "face_to_photo", "brightness",
                    "clipped_dark", "clipped_bright", "duplicate_of", "upscaled", "framing"):
            assert key in im
    assert by_source["coffee.jpg"]["faces"] == 0
    assert by_source["plain.jpg"]["faces"] == 1 and by_source["plain.jpg"]["upscaled"]
    assert by_source["cmyk.jpg"]["notes"] == ["CMYK converted to RGB"]
    assert {r["file"] for r in report["rejected"]} >= {"bomb.png", "empty.jpg", "notes.jpg"}
    for w in [w for im in report["images"] for w in im["warnings"]] + report["set"]["warnings"]:
        assert ":" in w or ";" in w  # every warning says what to do after the finding


def test_save_captions_is_atomic_and_updates_the_hash(prepared, tmp_path):
    import shutil

    _, result, ws, _ = prepared
    copy = tmp_path / "copy"
    shutil.copytree(result.dataset.path, copy)
    before = store.open_dataset(copy)
    first = before.entries[0]["file_name"]
    last = before.entries[-1]["file_name"]
    after = store.save_captions(copy, {first: "a photo of TOK person, edited by hand"},
                                drop=[last], workspace=ws)
    assert after.entries[0]["text"] == "a photo of TOK person, edited by hand"
    assert last not in {e["file_name"] for e in after.entries}
    assert not (copy / "images" / last).exists() and not (copy / "originals" / last).exists()
    assert after.info["hash"] != before.info["hash"]
    assert after.info["hash"] == store.dataset_hash(copy)
    assert after.info["count"] == before.info["count"] - 1
    with pytest.raises(DatasetError, match="not in the dataset"):
        store.save_captions(copy, {"../../etc/passwd": "x"})


def test_existing_folder_is_not_overwritten(tmp_path, tiny_models):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists"):
        prepare_dataset([("a.png", _png(dp.astronaut()))], out, detector=HaarDetector(),
                        captioner=get_captioner("blip", str(tiny_models["captioner"]), max_new_tokens=4,
                                            num_beams=1))
    assert (out / "keep.txt").read_text() == "mine"


def test_nothing_usable_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="No usable photos remain .*empty.jpg: empty file"):
        prepare_dataset([("empty.jpg", b"")], tmp_path / "out", detector=HaarDetector(),
                        captioner="unused")
    assert not (tmp_path / "out").exists()


def _png(im: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# ---- CLI ----------------------------------------------------------------------------------
def _cli(args, tmp_path, timeout=240, **env):
    e = dict(os.environ)
    e.update({"STUDIO_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
              "STUDIO_FACEXLIB_DIR": str(tmp_path / "no-weights"), "STUDIO_DEVICE": "cpu"})
    e.update(env)
    return subprocess.run([sys.executable, "-m", "studio", "prepare", *map(str, args)], cwd=ROOT,
                          env=e, capture_output=True, text=True, timeout=timeout)


def test_cli_auto_falls_back_to_haar_with_a_notice(tmp_path, tiny_models):
    src = tmp_path / "in"
    src.mkdir()
    dp.save(dp.astronaut(), src / "me.jpg")
    (src / "broken.jpg").write_text("nope")
    out = tmp_path / "ds"
    p = _cli([src, "--out", out, "--detector", "auto", "--captioner", tiny_models["captioner"],
              "--trigger", "ohwx", "--class-word", "woman", "--framing", "close-up"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Notice: using the OpenCV Haar face detector" in p.stderr
    assert "ok       me.jpg -> 0001.png" in p.stdout
    assert "rejected broken.jpg: not an image" in p.stdout
    meta = store.open_dataset(out)
    assert meta.info["detector"] == "haar" and meta.info["framing"] == "close-up"
    assert meta.entries[0]["text"].startswith("a photo of ohwx woman")
    assert (out / "report.json").is_file()


def test_cli_retinaface_offline_is_one_sentence_and_fast(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    dp.save(dp.astronaut(), src / "me.jpg")
    p = _cli([src, "--out", tmp_path / "ds", "--detector", "retinaface"], tmp_path, timeout=60)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: RetinaFace weights are not in")
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "ds").exists()


def test_cli_exits_non_zero_only_when_nothing_usable(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "empty.jpg").write_bytes(b"")
    dp.png_bomb(src / "bomb.png")
    p = _cli([src, "--out", tmp_path / "ds", "--detector", "haar"], tmp_path, timeout=120)
    assert p.returncode != 0
    assert "empty.jpg: empty file" in p.stderr and "bomb.png: refused" in p.stderr
