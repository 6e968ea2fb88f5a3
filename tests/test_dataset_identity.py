"""One person, the right face: identity checks in dataset preparation, with the real dlib model
on photos of two real people (the astronaut Eileen Collins and Grace Hopper)."""

from __future__ import annotations

import json
import re

import dataset_photos as dp
import numpy as np
import pytest
from identity_support import EveryFaceDetector, FixedCaptioner, crop_distance, one_vector

from studio.dataset import identity as I
from studio.dataset import store
from studio.dataset.faces import HaarDetector
from studio.dataset.pipeline import prepare_dataset
from studio.identity.engine import SAME_PERSON, get_engine


@pytest.fixture(scope="module")
def people():
    return {"astronaut": one_vector(dp.astronaut()), "grace": one_vector(dp.grace_hopper())}


def _prepare(folder, out, detector=None, **kw):
    return prepare_dataset([folder], out, detector=detector or HaarDetector(),
                           captioner=FixedCaptioner(), **kw)


def _write(folder, photos: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, im in photos.items():
        dp.save(im, folder / name)


def _by_source(result) -> dict[str, dict]:
    return {im["source"]: im for im in result.report["images"]}


def test_grace_hopper_in_an_astronaut_set_is_flagged_by_name(tmp_path):
    _write(tmp_path / "in", {**dp.good_variants(), "grace_hopper.jpg": dp.grace_hopper()})
    result = _prepare(tmp_path / "in", tmp_path / "ds")
    images = _by_source(result)
    grace = images["grace_hopper.jpg"]
    sentence = next(w for w in grace["warnings"] if "same person" in w)
    assert re.fullmatch(rf"{grace['file']} \(grace_hopper\.jpg\) does not look like the same "
                        r"person as the other 4 photos \(distance 0\.\d\d; same person is below "
                        r"0\.6\): drop it or check it\.", sentence), sentence
    assert grace["identity_distance"] > SAME_PERSON
    for name in dp.good_variants():
        im = images[name]
        assert im["identity_distance"] < 0.35, (name, im["identity_distance"])
        assert not any("same person" in w for w in im["warnings"])
    ident = result.report["identity"]
    assert ident["outliers"] == [grace["file"]] and ident["measured"] == 5 and ident["group"] == 4
    assert any(grace["file"] in w for w in result.report["set"]["warnings"])
    line = next(o.line() for o in result.outcomes if o.file == "grace_hopper.jpg")
    assert "does not look like the same person" in line  # what `prepare` prints
    on_disk = json.loads((result.dataset.path / store.REPORT).read_text())
    saved = {im["file"]: im for im in on_disk["images"]}[grace["file"]]
    assert saved["identity_distance"] == grace["identity_distance"] and sentence in saved["warnings"]
    assert on_disk["identity"]["outliers"] == [grace["file"]]


def test_crop_follows_the_astronaut_in_an_astronaut_set(tmp_path, people):
    """Grace Hopper's face is the larger one in the two-person photo; the set is the astronaut."""
    _write(tmp_path / "in", {**dp.good_variants(),
                             "two.png": dp.side_by_side(dp.astronaut(), dp.grace_hopper())})
    result = _prepare(tmp_path / "in", tmp_path / "ds", detector=EveryFaceDetector())
    two = _by_source(result)["two.png"]
    crop = result.dataset.path / "images" / two["file"]
    assert crop_distance(crop, people["astronaut"]) < SAME_PERSON < \
        crop_distance(crop, people["grace"])
    assert two["faces"] == 2 and two["identity_distance"] < SAME_PERSON
    assert any(w.startswith("2 faces: the one that looks like the person in the other photos")
               for w in two["warnings"]), two["warnings"]
    assert not any("largest" in w for w in two["warnings"])


def test_without_an_identity_the_largest_face_is_cropped_with_a_warning(tmp_path, people):
    """Two single-face photos do not establish an identity (three are needed)."""
    variants = dict(list(dp.good_variants().items())[:2])
    _write(tmp_path / "in", {**variants,
                             "two.png": dp.side_by_side(dp.astronaut(), dp.grace_hopper())})
    result = _prepare(tmp_path / "in", tmp_path / "ds", detector=EveryFaceDetector())
    two = _by_source(result)["two.png"]
    crop = result.dataset.path / "images" / two["file"]
    assert crop_distance(crop, people["grace"]) < SAME_PERSON  # the larger face
    assert any("the largest was used" in w for w in two["warnings"])


def test_crop_follows_grace_hopper_in_her_set_even_when_the_detector_misses_her(tmp_path, people):
    """Haar finds only the astronaut in the two-person photo; the identity engine finds Grace
    Hopper there and the crop is made on her."""
    two = dp.side_by_side(dp.astronaut(), dp.grace_hopper())
    assert len(HaarDetector().detect(np.asarray(two))) == 1
    _write(tmp_path / "in", {**dp.grace_variants(), "two.png": two})
    result = _prepare(tmp_path / "in", tmp_path / "ds")
    got = _by_source(result)["two.png"]
    crop = result.dataset.path / "images" / got["file"]
    assert crop_distance(crop, people["grace"]) < SAME_PERSON < \
        crop_distance(crop, people["astronaut"])
    assert got["faces"] == 2 and got["identity_distance"] < SAME_PERSON
    assert result.report["identity"]["outliers"] == []


def test_a_face_too_unclear_to_embed_is_noted_not_flagged(tmp_path):
    """Haar still finds the face in a strongly blurred photo; dlib cannot measure it."""
    from PIL import ImageFilter

    blurred = dp.astronaut().resize((800, 800)).filter(ImageFilter.GaussianBlur(6))
    _write(tmp_path / "in", {**dp.good_variants(), "blurred.png": blurred})
    result = _prepare(tmp_path / "in", tmp_path / "ds")
    got = _by_source(result)["blurred.png"]
    assert got["faces"] == 1 and got["identity_distance"] is None
    assert I.NOT_MEASURED in got["warnings"]
    assert not any("does not look like" in w for w in got["warnings"])
    assert result.report["identity"]["not_measured"] == [got["file"]]
    assert result.report["identity"]["outliers"] == []


def test_embeddings_are_cached_by_dataset_hash(tmp_path, people):
    _write(tmp_path / "in", dp.good_variants())
    ds = _prepare(tmp_path / "in", tmp_path / "ds").dataset
    cached = store.read_identity(ds.path)
    assert cached["hash"] == ds.info["hash"] and cached["engine"] == "dlib"

    class Counting:
        name, calls = "dlib", 0

        def embed(self, rgb):
            Counting.calls += 1
            return get_engine().embed(rgb)

    got = I.dataset_embeddings(ds.path, Counting())
    assert Counting.calls == 0 and sorted(got) == [e["file_name"] for e in ds.entries]
    assert all(I.distance(e.vector, people["astronaut"]) < 0.35 for e in got.values())
    # Dropping an image changes the hash: the cache no longer applies and is rebuilt.
    store.save_captions(ds.path, {}, drop=[ds.entries[0]["file_name"]])
    assert store.read_identity(ds.path) is None
    again = I.dataset_embeddings(ds.path, Counting())
    assert Counting.calls == 3 and len(again) == 3
    assert store.read_identity(ds.path)["hash"] == store.open_dataset(ds.path).info["hash"]


def test_assess_outlier_majority_and_unmeasured():
    rng = np.random.default_rng(0)
    base = rng.normal(size=128).astype(np.float32) * 0.03
    same = [base + rng.normal(size=128).astype(np.float32) * 0.01 for _ in range(4)]
    other = base + 0.2  # ~2.3 away
    photos = [I.PhotoIdentity(f"{i:04d}.png", f"p{i}.jpg", v) for i, v in enumerate(same, 1)]
    photos += [I.PhotoIdentity("0005.png", "x.jpg", other),
               I.PhotoIdentity("0006.png", "turned.jpg", None, faces=1),
               I.PhotoIdentity("0007.png", "coffee.jpg", None, faces=0)]
    res = I.assess(photos)
    assert res["images"][4]["warning"].startswith(
        "0005.png (x.jpg) does not look like the same person as the other 4 photos (distance 2.")
    assert res["images"][5]["warning"] == I.NOT_MEASURED and res["images"][6]["warning"] is None
    assert all(r["warning"] is None and r["distance"] < 0.2 for r in res["images"][:4])
    assert res["set"]["not_measured"] == ["0006.png", "0007.png"]
    # Two people, two photos each: no majority, no photo is singled out, the set is warned.
    split = I.assess([I.PhotoIdentity(f"{i}.png", "", v)
                      for i, v in enumerate([same[0], same[1], other, other + 0.001])])
    assert not split["set"]["outliers"]
    assert "do not show one person" in split["set"]["warnings"][0]
