"""Ingest: validation, normalisation, zip safety, duplicates."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import dataset_photos as dp
import numpy as np
import pytest
from PIL import Image

from studio.dataset.ingest import MIN_SIDE, Reject, decode_image, ingest


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("name,data,keyword", [
    ("empty.jpg", b"", "empty file"),
    ("notes.jpg", b"just some text\n" * 10, "not an image although it is named .jpg"),
    ("doc.pdf", b"%PDF-1.4 not an image", "not an image"),
])
def test_non_images_are_rejected_with_a_reason(name, data, keyword):
    with pytest.raises(Reject, match=keyword):
        decode_image(name, data)


def test_truncated_jpeg_is_rejected():
    data = _bytes(dp.astronaut().resize((800, 800)), "JPEG", quality=95)
    with pytest.raises(Reject, match="truncated"):
        decode_image("cut.jpg", data[: len(data) // 2])


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path):
    path = dp.png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    t0 = time.perf_counter()
    res = ingest([path])
    assert time.perf_counter() - t0 < 5
    assert not res.accepted
    assert "decompression bomb" in res.rejected[0].reason
    assert "bomb.png" in str(res.rejected[0])


def test_too_small_states_the_minimum():
    with pytest.raises(Reject, match=f"at least {MIN_SIDE} px"):
        decode_image("small.png", _bytes(dp.astronaut().resize((400, 300)), "PNG"))


def test_cmyk_16bit_palette_alpha_animated_become_8bit_rgb():
    a = dp.astronaut().resize((600, 600))
    cmyk = decode_image("c.jpg", _bytes(a.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.image.mode == "RGB" and "CMYK converted to RGB" in cmyk.notes
    diff = np.abs(np.asarray(cmyk.image, np.int16) - np.asarray(a, np.int16)).mean()
    assert diff < 6, diff  # colours survive the CMYK round trip

    grey = np.asarray(a.convert("L"), np.uint16)
    g16 = decode_image("g.png", _bytes(Image.fromarray(grey * 257, "I;16"), "PNG"))
    assert g16.image.mode == "RGB"
    assert np.abs(np.asarray(g16.image)[..., 0].astype(int) - grey).max() <= 1

    pal = decode_image("p.png", _bytes(a.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"))
    assert pal.image.mode == "RGB"

    rgba = a.convert("RGBA")
    rgba.putalpha(0)
    white = decode_image("t.png", _bytes(rgba, "PNG"))
    assert np.asarray(white.image).min() == 255  # fully transparent -> white

    frames = [a, a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    anim = decode_image("anim.webp", _bytes(frames[0], "WEBP", save_all=True,
                                            append_images=frames[1:], lossless=True))
    assert anim.image.mode == "RGB" and any("first frame" in n for n in anim.notes)
    assert np.abs(np.asarray(anim.image, int) - np.asarray(a, int)).mean() < 1


def test_exif_and_gps_are_stripped_and_orientation_applied(tmp_path):
    a = dp.astronaut()
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[2] = (52.0, 31.0, 12.0)
    gps[1] = "N"
    stored = a.transpose(Image.Transpose.ROTATE_90)
    img = decode_image("gps.jpg", _bytes(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert img.image.size == a.size
    assert "GPS location removed" in img.notes
    assert not img.image.getexif() and not img.image.info
    out = tmp_path / "x.png"
    img.image.save(out)
    assert not Image.open(out).getexif()


def test_icc_profile_is_converted():
    from PIL import ImageCms

    a = dp.astronaut()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = decode_image("icc.png", _bytes(a, "PNG", icc_profile=icc))
    assert img.image.mode == "RGB" and "icc_profile" not in img.image.info
    assert np.abs(np.asarray(img.image, int) - np.asarray(a, int)).mean() < 3


def test_exact_and_near_duplicates():
    a = dp.astronaut()
    data = _bytes(a, "PNG")
    res = ingest([("one.png", data), ("two.png", data),
                  ("bigger.jpg", _bytes(a.resize((900, 900)), "JPEG", quality=90)),
                  ("mirror.png", _bytes(a.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"))])
    assert [r.name for r in res.rejected] == ["two.png"]
    assert "exact duplicate of one.png" in res.rejected[0].reason
    by = {i.name: i for i in res.accepted}
    assert by["bigger.jpg"].near_duplicate_of == "one.png"
    assert by["mirror.png"].near_duplicate_of is None


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_is_read_safely(tmp_path):
    good = _bytes(dp.astronaut(), "JPEG", quality=90)
    z = tmp_path / "photos.zip"
    z.write_bytes(_zip({"trip/me.jpg": good, "../evil.jpg": good, "/abs.jpg": good,
                        "__MACOSX/._me.jpg": b"junk", "bomb.png": b"\0" * 50_000_000,
                        "inner.zip": _zip({"x.jpg": good})}))
    res = ingest([z])
    assert [i.name for i in res.accepted] == ["photos.zip:trip/me.jpg"]
    reasons = {r.name: r.reason for r in res.rejected}
    assert "unsafe path" in reasons["photos.zip:../evil.jpg"]
    assert "unsafe path" in reasons["photos.zip:/abs.jpg"]
    assert "zip bomb" in reasons["photos.zip:bomb.png"]
    assert "nested" in reasons["photos.zip:inner.zip"]
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_broken_zip_is_one_rejection(tmp_path):
    z = tmp_path / "broken.zip"
    z.write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    res = ingest([z, ("ok.png", _bytes(dp.astronaut(), "PNG"))])
    assert len(res.accepted) == 1
    assert res.rejected[0].name == "broken.zip" and "zip" in res.rejected[0].reason


def test_whole_mixed_batch_reasons(tmp_path):
    expect = dp.mixed_batch(tmp_path / "in")
    res = ingest([tmp_path / "in"])
    got = {i.name: "accepted" for i in res.accepted}
    got.update({r.name: r.reason for r in res.rejected})
    assert set(got) == set(expect)
    for name, keyword in expect.items():
        assert keyword in got[name], (name, got[name])
    assert all(Path(n).suffix for n in got)


def test_links_in_the_photos_folder_are_reported(tmp_path):
    """Links to folders are not followed, and each gets one line, like any skipped file."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    dp.save(dp.astronaut(), photos / "me.jpg", quality=90)
    dp.save(dp.no_face_photo(), elsewhere / "other.jpg", quality=90)
    (photos / "linked").symlink_to(elsewhere, target_is_directory=True)
    (photos / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (photos / ".hidden-link").symlink_to(elsewhere, target_is_directory=True)
    res = ingest([photos])
    assert [i.name for i in res.accepted] == ["me.jpg"]
    reasons = {r.name: r.reason for r in res.rejected}
    assert set(reasons) == {"linked", "dangling.jpg"}
    assert reasons["linked"] == "a link to a folder, which is not followed; skipped"
    assert reasons["dangling.jpg"] == "a broken link; skipped"


@pytest.mark.parametrize("fmt,name", [("HEIF", "iphone.heic"), ("AVIF", "photo.avif"),
                                      ("WEBP", "photo.webp")])
def test_heic_avif_webp_are_accepted(fmt, name):
    from studio.dataset.ingest import _register_heif

    _register_heif()
    a = dp.astronaut()
    img = decode_image(name, _bytes(a, fmt, quality=90))
    assert img.source_format == fmt and img.image.mode == "RGB" and img.image.size == a.size
    assert np.abs(np.asarray(img.image, int) - np.asarray(a, int)).mean() < 8
