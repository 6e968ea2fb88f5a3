"""The identity engine with the real dlib model on photos of two real people."""

from __future__ import annotations

import dataset_photos as dp
import numpy as np
import pytest
from PIL import Image

from studio.identity import engine as E


@pytest.fixture(scope="module")
def eng():
    return E.get_engine()


def _one(eng, im: Image.Image) -> np.ndarray:
    faces = eng.embed(np.asarray(im.convert("RGB")))
    assert len(faces) == 1, [f.box for f in faces]
    return faces[0].vector


def test_model_is_loaded_once_per_process(eng):
    assert E.get_engine() is eng and E.get_engine("dlib") is eng
    assert eng.name == "dlib"


def test_unknown_engine_is_one_sentence():
    with pytest.raises(E.IdentityError, match="Unknown identity engine 'arcface'"):
        E.get_engine("arcface")


def test_missing_model_file_is_one_sentence(tmp_path):
    with pytest.raises(E.IdentityError, match="shape_predictor_5_face_landmarks.dat.*reinstall"):
        E.DlibEngine(tmp_path)


def test_embedding_shape_and_box(eng):
    faces = eng.embed(np.asarray(dp.astronaut()))
    assert len(faces) == 1  # the patch on the suit is not a face
    f = faces[0]
    assert f.vector.dtype == np.float32 and f.vector.shape == (128,)
    x0, y0, x1, y1 = f.box
    assert 150 < (x0 + x1) / 2 < 280 and 60 < (y0 + y1) / 2 < 190, f.box  # her face
    assert f.area == pytest.approx((x1 - x0) * (y1 - y0))


def test_astronaut_variants_are_one_person(eng):
    ref = _one(eng, dp.astronaut())
    variants = dict(dp.good_variants())
    variants["rot-12"] = dp.astronaut().rotate(-12, resample=Image.Resampling.BICUBIC)
    variants["crop"] = dp.astronaut().crop((100, 20, 360, 280))
    for name, im in variants.items():
        d = E.distance(ref, _one(eng, im))
        assert d < E.SAME_PERSON, (name, d)
        assert E.likeness(d) > 1 - E.SAME_PERSON
    mirror = _one(eng, dp.astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert E.distance(ref, mirror) < 0.3


def test_two_people_are_far_apart(eng):
    a = _one(eng, dp.astronaut())
    g = _one(eng, dp.grace_hopper())
    assert E.distance(a, g) > E.SAME_PERSON
    for im in dp.grace_variants().values():  # and Grace Hopper is one person too
        assert E.distance(g, _one(eng, im)) < E.SAME_PERSON


def test_composite_gives_two_faces_each_near_its_person(eng):
    a = _one(eng, dp.astronaut())
    g = _one(eng, dp.grace_hopper())
    both = dp.side_by_side(dp.astronaut(), dp.grace_hopper())
    faces = eng.embed(np.asarray(both))
    assert len(faces) == 2, [f.box for f in faces]
    left, right = sorted(faces, key=lambda f: f.center[0])
    assert E.distance(left.vector, a) < 0.3 < E.distance(left.vector, g)
    assert E.distance(right.vector, g) < 0.3 < E.distance(right.vector, a)
    assert faces[0].area >= faces[1].area  # largest first


def test_no_face_and_tiny_image(eng):
    assert eng.embed(np.asarray(dp.no_face_photo())) == []
    assert eng.embed(np.zeros((40, 40, 3), np.uint8)) == []
    with pytest.raises(ValueError):
        eng.embed(np.zeros((40, 40), np.uint8))


def test_center_and_distance():
    vs = [np.zeros(128, np.float32), np.full(128, 2.0, np.float32)]
    c = E.center(vs)
    assert c.dtype == np.float32 and np.allclose(c, 1.0)
    assert E.distance(vs[0], c) == pytest.approx(np.sqrt(128))
    with pytest.raises(ValueError):
        E.center([])
