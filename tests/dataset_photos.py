"""Test photos for the dataset tests, built from images that ship with installed packages.

``skimage.data.astronaut()`` (Eileen Collins) and matplotlib's ``sample_data/grace_hopper.jpg``
show two different real people; variety comes from different crops, scales, mirror images and
small rotations (each changes the difference hash enough not to count as a near duplicate),
plus photos with no face at all.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def astronaut() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.astronaut())


def grace_hopper() -> Image.Image:
    """A 512x600 portrait of Grace Hopper from matplotlib's sample data."""
    import matplotlib

    return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
                      ).convert("RGB")


def grace_variants() -> dict[str, Image.Image]:
    """Grace Hopper photos that differ in crop, scale, mirror and tilt."""
    g = grace_hopper()
    return {
        "grace_plain.jpg": g,
        "grace_mirror.png": g.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize(
            (768, 900), Image.Resampling.LANCZOS),
        "grace_tilted.webp": g.rotate(-8, resample=Image.Resampling.BICUBIC).crop(
            (10, 30, 502, 570)).resize((700, 768), Image.Resampling.LANCZOS),
        "grace_top.png": g.crop((40, 40, 480, 480)).resize((820, 820), Image.Resampling.LANCZOS),
    }


def side_by_side(left: Image.Image, right: Image.Image, height: int = 600) -> Image.Image:
    """Two photos next to each other at one height (a two-person photo)."""
    lw = round(left.width * height / left.height)
    rw = round(right.width * height / right.height)
    out = Image.new("RGB", (lw + rw, height), (128, 128, 128))
    out.paste(left.resize((lw, height), Image.Resampling.LANCZOS), (0, 0))
    out.paste(right.resize((rw, height), Image.Resampling.LANCZOS), (lw, 0))
    return out


def no_face_photo(size=(900, 600)) -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.coffee()).resize(size, Image.Resampling.LANCZOS)


def good_variants() -> dict[str, Image.Image]:
    """Astronaut photos that differ in crop, scale, mirror and tilt (not near duplicates)."""
    a = astronaut()
    return {
        "plain.jpg": a,
        "mirror_big.png": a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize(
            (900, 900), Image.Resampling.LANCZOS),
        "tilted.webp": a.rotate(9, resample=Image.Resampling.BICUBIC).crop(
            (20, 0, 512, 492)).resize((700, 700), Image.Resampling.LANCZOS),
        "top_left.png": a.crop((40, 10, 440, 410)).resize((820, 820), Image.Resampling.LANCZOS),
    }


def save(im: Image.Image, path: Path, **kw) -> Path:
    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix.lower()]
    if fmt == "JPEG":
        kw.setdefault("quality", 95)
    im.save(path, format=fmt, **kw)
    return path


def png_bomb(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 1-bit PNG of width x height px (400 MP) that is only ~50 KB on disk."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) +
                     chunk(b"IEND", b""))
    return path


def sixteen_bit_png(im: Image.Image, path: Path) -> Path:
    grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey.astype(np.uint16), "I;16").save(path)
    return path


def rgba_png(im: Image.Image, path: Path) -> Path:
    rgba = im.convert("RGBA")
    alpha = np.full((im.height, im.width), 255, np.uint8)
    alpha[:, -40:] = 0  # a transparent strip at the right edge
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(path)
    return path


def exif_rotated_jpeg(im: Image.Image, path: Path, orientation: int = 6) -> Path:
    """Pixels stored rotated, with the EXIF tag that tells viewers how to restore them."""
    stored = {6: im.transpose(Image.Transpose.ROTATE_90),
              8: im.transpose(Image.Transpose.ROTATE_270),
              3: im.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def mixed_batch(folder: Path) -> dict[str, str]:
    """Write the acceptance batch; returns {file name: expected outcome keyword}."""
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}
    variants = good_variants()
    for name, im in variants.items():
        save(im, folder / name)
        expect[name] = "accepted"
    a = astronaut()
    a.crop((60, 30, 512, 482)).resize((640, 640)).convert("CMYK").save(folder / "cmyk.jpg",
                                                                       quality=95)
    expect["cmyk.jpg"] = "accepted"
    sixteen_bit_png(a.crop((0, 0, 460, 512)).resize((560, 620)), folder / "grey16.png")
    expect["grey16.png"] = "accepted"
    rgba_png(a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 40, 512, 512)).resize(
        (600, 560)), folder / "alpha.png")
    expect["alpha.png"] = "accepted"
    save(no_face_photo(), folder / "coffee.jpg")
    expect["coffee.jpg"] = "accepted"
    (folder / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "empty"
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    expect["notes.jpg"] = "not an image"
    buf = folder / "full.jpg"
    save(a.resize((800, 800)), buf)
    data = buf.read_bytes()
    buf.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    expect["truncated.jpg"] = "truncated"
    png_bomb(folder / "bomb.png")
    expect["bomb.png"] = "decompression bomb"
    (folder / "plain_copy.jpg").write_bytes((folder / "plain.jpg").read_bytes())
    expect["plain_copy.jpg"] = "exact duplicate"
    save(a.resize((300, 300)), folder / "small.png")
    expect["small.png"] = "at least 512"
    return expect
