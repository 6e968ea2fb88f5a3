"""Faces: Haar detection, eye alignment, framing, EXIF orientation, offline RetinaFace."""

from __future__ import annotations

import io
import math
import time

import dataset_photos as dp
import numpy as np
import pytest
from PIL import Image

from studio.dataset import crop
from studio.dataset import faces as F
from studio.dataset.ingest import decode_image


@pytest.fixture(scope="module")
def haar():
    return F.HaarDetector()


def _largest(det, im: Image.Image) -> F.Face:
    found = det.detect(np.asarray(im))
    assert found, "no face found"
    return found[0]


def test_astronaut_one_face_and_centred_closeup(haar):
    a = dp.astronaut()
    found = haar.detect(np.asarray(a))
    assert len(found) == 1
    assert found[0].left_eye is not None and found[0].right_eye is not None
    res = crop.crop_face(a, found, "close-up")
    assert res.image.size == (1024, 1024)
    assert res.upscaled and res.source_side < 1024  # 512 px photo: flagged as upscaled
    # From the transform: the face centre lands at the crop centre.
    cx, cy = res.window.to_crop(crop.align(found[0]).center)
    assert abs(cx - 512) < 0.05 * 1024 and abs(cy - 512) < 0.08 * 1024, (cx, cy)
    # Measured on the crop itself.
    fx, fy = _largest(haar, res.image).center
    assert abs(fx - 512) < 0.1 * 1024 and abs(fy - 512) < 0.1 * 1024, (fx, fy)


@pytest.mark.parametrize("framing", ["head-and-shoulders", "upper-body", "full"])
def test_other_framings_keep_the_face_centred_horizontally(haar, framing):
    big = dp.astronaut().resize((1400, 1400), Image.Resampling.LANCZOS)
    found = haar.detect(np.asarray(big))
    res = crop.crop_face(big, found, framing)
    assert res.image.size == (1024, 1024)
    face = _largest(haar, res.image)
    fx, fy = face.center
    assert abs(fx - 512) < 0.15 * 1024, (framing, fx)
    assert fy < 600, (framing, fy)  # the face sits in the upper part of the frame
    tight = crop.crop_face(big, found, "close-up")
    # Wider framings show more of the photo around the face.
    assert res.source_side > tight.source_side


def test_exif_orientation_6_gives_the_same_crop(haar):
    a = dp.astronaut()
    buf = io.BytesIO()
    a.save(buf, format="JPEG", quality=95)
    upright = decode_image("upright.jpg", buf.getvalue()).image
    rotated_buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    a.transpose(Image.Transpose.ROTATE_90).save(rotated_buf, format="JPEG", quality=95,
                                                 exif=exif.tobytes())
    turned = decode_image("turned.jpg", rotated_buf.getvalue())
    assert any("orientation 6" in n for n in turned.notes)
    crops, windows = [], []
    for im in (upright, turned.image, upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT)):
        found = haar.detect(np.asarray(im))
        assert len(found) == 1
        res = crop.crop_face(im, found)
        windows.append(res.window)
        # Haar boxes jitter by a pixel between JPEG encodings: compare at 64 px.
        crops.append(np.asarray(res.image.resize((64, 64), Image.Resampling.BOX), np.int16))
    assert np.allclose(windows[0].center, windows[1].center, atol=3)
    assert windows[1].side == pytest.approx(windows[0].side, rel=0.03)
    same = np.abs(crops[0] - crops[1]).mean()
    different = np.abs(crops[0] - crops[2]).mean()  # a mirrored photo: clearly another crop
    assert same < 5 and different > 5 * same, (same, different)


def test_exif_orientation_6_lossless_gives_identical_crop(haar, tmp_path):
    a = dp.astronaut()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    a.transpose(Image.Transpose.ROTATE_90).save(buf, format="PNG", exif=exif.tobytes())
    turned = decode_image("turned.png", buf.getvalue()).image
    assert np.array_equal(np.asarray(turned), np.asarray(a))
    crops = [np.asarray(crop.crop_face(im, haar.detect(np.asarray(im))).image) for im in (a, turned)]
    assert np.array_equal(crops[0], crops[1])


@pytest.mark.parametrize("tilt", [-25, -10, 8, 25])
def test_tilted_head_is_levelled_on_the_eyes(haar, tilt):
    a = dp.astronaut().resize((1024, 1024), Image.Resampling.LANCZOS)
    tilted = a.rotate(tilt, resample=Image.Resampling.BICUBIC, center=(446, 226))
    found = haar.detect(np.asarray(tilted))
    res = crop.crop_face(tilted, found, "close-up")
    assert res.method == "eyes"
    assert math.degrees(res.window.angle) == pytest.approx(-tilt + 3, abs=4)
    face = _largest(haar, res.image)
    assert face.left_eye and face.right_eye
    dx = face.right_eye[0] - face.left_eye[0]
    dy = face.right_eye[1] - face.left_eye[1]
    assert abs(math.degrees(math.atan2(dy, dx))) < 6


def test_five_point_alignment_uses_landmarks():
    # A synthetic RetinaFace detection: eyes tilted by 20 degrees.
    ang = math.radians(20)
    c, s = math.cos(ang), math.sin(ang)
    pts = crop._TEMPLATE_112 * 3.0 @ np.array([[c, s], [-s, c]]) + np.array([400.0, 300.0])
    face = F.Face(box=(400, 300, 736, 636), landmarks=pts, left_eye=tuple(pts[0]),
                  right_eye=tuple(pts[1]))
    al = crop.align(face)
    assert al.method == "5-point"
    assert math.degrees(al.angle) == pytest.approx(20, abs=0.5)
    assert al.size == pytest.approx(112 * 3 * 0.95, rel=0.01)


def test_no_face_and_tiny_face_are_reported(haar):
    coffee = dp.no_face_photo()
    assert haar.detect(np.asarray(coffee)) == []
    res = crop.crop_face(coffee, [], "head-and-shoulders")
    assert res.image.size == (1024, 1024) and res.face is None and res.method == "no face"
    tiny = F.Face(box=(10, 10, 50, 50))
    res = crop.crop_face(dp.astronaut(), [tiny], "close-up")
    assert any("only 40 px" in w for w in res.warnings)


def test_several_faces_choose_the_largest_and_warn():
    a = dp.astronaut().resize((1024, 1024))
    small = F.Face(box=(800, 800, 900, 900))
    big = F.Face(box=(354, 134, 540, 320))
    res = crop.crop_face(a, [small, big], "close-up")
    assert res.face is big and res.faces_found == 2
    assert any("2 faces" in w for w in res.warnings)


def test_elongated_full_photo_is_padded(haar):
    pano = dp.astronaut().resize((1600, 500))
    res = crop.crop_face(pano, [], "full")
    assert res.image.size == (1024, 1024)
    assert any("padded" in w for w in res.warnings)


def test_face_at_the_edge_never_crashes():
    a = dp.astronaut()
    for box in [(0, 0, 200, 200), (400, 400, 512, 512), (-20, 100, 300, 420), (0, 0, 512, 512)]:
        for framing in crop.FRAMING_CHOICES:
            face = F.Face(box=box, left_eye=(box[0] + 40, box[1] + 60),
                          right_eye=(box[0] + 120, box[1] + 75))
            res = crop.crop_face(a, [face], framing)
            assert res.image.size == (1024, 1024)


def test_retinaface_offline_fails_fast_with_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_FACEXLIB_DIR", str(tmp_path / "fx"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(F.FaceDetectorError) as err:
        F.get_detector("retinaface")
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert msg.count(". ") == 0 and msg.endswith(".") and "RetinaFace" in msg
    assert str(tmp_path / "fx") in msg
    det, notice = F.get_detector("auto")
    assert det.name == "haar" and notice.startswith("Notice: using the OpenCV Haar")


def test_retinaface_without_network_does_not_download(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_FACEXLIB_DIR", str(tmp_path / "fx"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("STUDIO_OFFLINE", raising=False)
    monkeypatch.setattr(F, "_reachable", lambda *a, **k: False)

    def no_download(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("tried to download")

    monkeypatch.setattr(F.urllib.request, "urlopen", no_download)
    with pytest.raises(F.FaceDetectorError, match="cannot be reached"):
        F.ensure_retinaface_weights()


def test_face_in_a_large_photo_with_texture_is_found_once(haar):
    # A 12 MP photo: the astronaut, tilted, pasted into a larger scene with no other face.
    scene = dp.no_face_photo((4000, 3000))
    scene.paste(dp.astronaut().resize((1400, 1400)).rotate(-14, resample=Image.Resampling.BICUBIC),
                (2200, 900))
    t0 = time.perf_counter()
    found = haar.detect(np.asarray(scene))
    assert time.perf_counter() - t0 < 20
    assert len(found) == 1
    cx, cy = found[0].center
    assert 2700 < cx < 3100 and 1000 < cy < 1400, (cx, cy)
    res = crop.crop_face(scene, found)
    assert math.degrees(res.window.angle) == pytest.approx(14 + 3, abs=4)
