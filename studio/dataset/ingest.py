"""Ingest: read uploaded files or zips safely, validate them, normalise to 8-bit sRGB RGB.

Every input becomes either an :class:`IngestedImage` or a :class:`Rejection` with a one-line
reason; one bad file never stops the batch. What is checked:

- zips: no absolute or ``..`` member paths, at most :data:`MAX_ZIP_MEMBERS` members, each at most
  :data:`MAX_FILE_BYTES`, at most :data:`MAX_ZIP_TOTAL_BYTES` in all, no member whose compression
  ratio exceeds :data:`MAX_ZIP_RATIO` (zip bombs), no encrypted or nested archives;
- files: not empty, at most :data:`MAX_FILE_BYTES`, really an image by content (JPEG, PNG, WebP,
  HEIC/HEIF, AVIF, MPO, GIF), at most :data:`MAX_PIXELS` pixels (decompression bombs are refused
  from the header, before any pixel is decoded), not truncated, short side at least
  :data:`MIN_SIDE` px;
- normalisation: EXIF orientation applied, first frame of animations, ICC profile converted to
  sRGB, CMYK / 16-bit / palette / alpha (composited on white) converted to 8-bit RGB; the result
  carries no EXIF/GPS or other metadata;
- duplicates: exact (same pixels after normalisation) are rejected, near duplicates (difference
  hash within :data:`NEAR_DUP_BITS` bits) are kept and reported.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from studio.errors import first_line

log = logging.getLogger(__name__)

MIN_SIDE = 512
"""Shortest accepted side in pixels (after EXIF rotation). Smaller photos make blurry crops."""
MAX_PIXELS = 80_000_000
"""Largest accepted image (80 megapixels); larger headers are refused before decoding."""
MAX_FILE_BYTES = 60 * 1024 * 1024
MAX_FILES = 500
MAX_ZIP_MEMBERS = 1000
MAX_ZIP_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_ZIP_RATIO = 100
NEAR_DUP_BITS = 6

FORMATS = {"JPEG", "PNG", "WEBP", "HEIF", "AVIF", "MPO", "GIF"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".heic", ".heif", ".avif", ".gif",
                  ".mpo"}

_heif_registered = False


def _register_heif() -> None:
    """Let Pillow open HEIC/HEIF (iPhone photos) when pillow-heif is installed."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except Exception as exc:  # pragma: no cover - optional dependency
        log.info("HEIC support unavailable (%s)", exc)


@dataclass
class Rejection:
    """A file that was not used, with a one-line reason."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class IngestedImage:
    """An accepted photo, normalised to 8-bit sRGB RGB with no metadata."""

    name: str
    image: Image.Image
    source_format: str
    original_size: tuple[int, int]
    sha256: str
    dhash: int
    notes: list[str] = field(default_factory=list)
    near_duplicate_of: str | None = None


@dataclass
class IngestResult:
    accepted: list[IngestedImage] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class Reject(Exception):
    """Raised inside the ingest steps; carries the one-line reason."""


InputItem = str | os.PathLike | tuple[str, bytes]


# ---- gathering raw files ---------------------------------------------------------------------
def iter_raw(inputs: Iterable[InputItem]) -> Iterator[tuple[str, bytes] | Rejection]:
    """Yield ``(display name, bytes)`` for every file in ``inputs`` (files, folders, zips, or
    in-memory ``(name, bytes)`` pairs), or a :class:`Rejection` for what cannot be read."""
    count = 0
    for item in inputs:
        if isinstance(item, tuple):
            name, data = item
            sources: Iterable = _expand_bytes(str(name), data)
        else:
            sources = _expand_path(Path(item))
        for src in sources:
            if isinstance(src, Rejection):
                yield src
                continue
            count += 1
            if count > MAX_FILES:
                yield Rejection(src[0], f"skipped: more than {MAX_FILES} files in one batch")
                continue
            yield src


def _expand_path(path: Path) -> Iterator[tuple[str, bytes] | Rejection]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if any(part.startswith(".") for part in p.relative_to(path).parts):
                continue
            if p.is_file():
                yield from _expand_path(p)
            elif p.is_symlink():  # rglob does not enter links to folders: say so, once each
                yield Rejection(p.name, "a link to a folder, which is not followed; skipped"
                                if p.exists() else "a broken link; skipped")
        return
    if not path.is_file():
        yield Rejection(path.name or str(path), "no such file")
        return
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            yield Rejection(path.name, f"file is {size / 2**20:.0f} MB; the limit is "
                                       f"{MAX_FILE_BYTES // 2**20} MB")
            return
        data = path.read_bytes()
    except OSError as exc:
        yield Rejection(path.name, f"could not be read ({exc.strerror or exc})")
        return
    yield from _expand_bytes(path.name, data)


def _expand_bytes(name: str, data: bytes) -> Iterator[tuple[str, bytes] | Rejection]:
    if data[:4] == b"PK\x03\x04" or (name.lower().endswith(".zip") and data):
        yield from _expand_zip(name, data)
    else:
        yield (name, data)


def _unsafe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return (name.startswith(("/", "\\")) or ".." in p.parts
            or (len(name) > 1 and name[1] == ":"))


def _expand_zip(zip_name: str, data: bytes) -> Iterator[tuple[str, bytes] | Rejection]:
    """Read a zip's members into memory with limits; nothing is extracted to disk by name."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        yield Rejection(zip_name, f"not a valid zip archive ({exc})")
        return
    files = [i for i in infos if not i.is_dir()]
    if len(files) > MAX_ZIP_MEMBERS:
        yield Rejection(zip_name, f"the zip holds {len(files)} files; the limit is "
                                  f"{MAX_ZIP_MEMBERS}")
        return
    declared = sum(i.file_size for i in files)
    if declared > MAX_ZIP_TOTAL_BYTES:
        yield Rejection(zip_name, f"the zip unpacks to {declared / 2**20:.0f} MB; the limit is "
                                  f"{MAX_ZIP_TOTAL_BYTES // 2**20} MB (zip bomb protection)")
        return
    total = 0
    with zf:
        for info in files:
            label = f"{zip_name}:{info.filename}"
            base = PurePosixPath(info.filename.replace("\\", "/"))
            if _unsafe_member(info.filename):
                yield Rejection(label, "unsafe path inside the zip (absolute or '..'); skipped")
                continue
            if base.parts and (base.parts[0] == "__MACOSX" or base.name.startswith(".")):
                yield Rejection(label, "hidden or system file inside the zip; skipped")
                continue
            if info.flag_bits & 0x1:
                yield Rejection(label, "encrypted zip member; unzip it yourself and upload "
                                       "the photos")
                continue
            if info.file_size > MAX_FILE_BYTES:
                yield Rejection(label, f"member is {info.file_size / 2**20:.0f} MB; the limit is "
                                       f"{MAX_FILE_BYTES // 2**20} MB")
                continue
            if info.file_size > 1_000_000 and info.compress_size and \
                    info.file_size / info.compress_size > MAX_ZIP_RATIO:
                yield Rejection(label, f"compression ratio {info.file_size // info.compress_size}:1 "
                                       "is suspicious (zip bomb protection); skipped")
                continue
            try:
                with zf.open(info) as fh:
                    content = fh.read(MAX_FILE_BYTES + 1)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError,
                    RuntimeError) as exc:
                yield Rejection(label, f"could not be read from the zip ({exc})")
                continue
            if len(content) > MAX_FILE_BYTES:
                yield Rejection(label, "member is larger than it claims (zip bomb protection); "
                                       "skipped")
                continue
            total += len(content)
            if total > MAX_ZIP_TOTAL_BYTES:
                yield Rejection(label, "the zip unpacks to more than "
                                       f"{MAX_ZIP_TOTAL_BYTES // 2**20} MB; the rest is skipped")
                return
            if content[:4] == b"PK\x03\x04":
                yield Rejection(label, "nested archives are not opened; unzip it first")
                continue
            yield (label, content)


# ---- decoding and normalising ----------------------------------------------------------------
def decode_image(name: str, data: bytes, min_side: int = MIN_SIDE) -> IngestedImage:
    """Validate and normalise one file; raises :class:`Reject` with a one-line reason."""
    _register_heif()
    if not data:
        raise Reject("empty file (0 bytes)")
    suffix = Path(name).suffix.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Reject(f"refused as a decompression bomb ({_bomb_size(str(exc))}); the limit is "
                     f"{MAX_PIXELS // 1_000_000} megapixels") from None
    except UnidentifiedImageError:
        named = f" although it is named {suffix}" if suffix in IMAGE_SUFFIXES else ""
        raise Reject(f"not an image{named}; use JPEG, PNG, WebP, HEIC or AVIF") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Reject(f"corrupt image header ({first_line(exc, 120)})") from None
    fmt = (im.format or "?").upper()
    if fmt not in FORMATS:
        raise Reject(f"{fmt} images are not accepted; convert it to JPEG or PNG")
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise Reject(f"refused as a decompression bomb ({w}x{h} px); the limit is "
                     f"{MAX_PIXELS // 1_000_000} megapixels")
    if min(w, h) < min_side:
        raise Reject(f"too small ({w}x{h} px); the short side must be at least {min_side} px")
    notes: list[str] = []
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
            notes.append("animated: first frame used")
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Reject(f"truncated or corrupt image data ({first_line(exc, 120)})") from None
    icc = im.info.get("icc_profile")
    exif = im.getexif()
    if exif.get(0x0112, 1) not in (0, 1):
        notes.append(f"EXIF orientation {exif.get(0x0112)} applied")
    try:
        im = ImageOps.exif_transpose(im)
        rgb = to_srgb_rgb8(im, icc, notes)
    except Reject:
        raise
    except Exception as exc:
        raise Reject(f"could not convert its colours ({first_line(exc, 120)})") from None
    if _has_gps(exif):
        notes.append("GPS location removed")
    rgb.info = {}
    return IngestedImage(name=name, image=rgb, source_format=fmt, original_size=rgb.size,
                         sha256=pixel_hash(rgb), dhash=dhash(rgb), notes=notes)


def _has_gps(exif) -> bool:
    try:
        from PIL.ExifTags import IFD

        return bool(exif.get_ifd(IFD.GPSInfo))
    except Exception:
        return False


def _bomb_size(msg: str) -> str:
    import re

    m = re.search(r"\((\d+) pixels\)", msg)
    return f"{int(m.group(1)) / 1e6:.0f} megapixels" if m else "too many pixels"


def to_srgb_rgb8(im: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB in sRGB (alpha composited on white)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            arr = arr / 257.0
        notes.append(f"{'16-bit' if mode != 'F' else 'floating-point'} greyscale converted "
                     "to 8-bit")
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] < 255:
            notes.append("transparency composited on white")
        base = Image.new("RGB", rgba.size, (255, 255, 255))
        base.paste(rgba.convert("RGB"), mask=alpha)
        im = base
        mode = "RGB"
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    if icc and mode in ("RGB", "CMYK"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                            outputMode="RGB")
            if out is not None:
                desc = ImageCms.getProfileDescription(src).strip()
                if "srgb" not in desc.lower():
                    notes.append(f"colour profile {desc[:40]!r} converted to sRGB")
                return out
        except Exception as exc:  # a broken profile: fall back to the plain conversion
            notes.append(f"colour profile ignored ({first_line(exc, 120)})")
    if mode != "RGB":
        if mode not in ("L", "1", "CMYK", "RGBX", "YCbCr", "HSV"):
            raise Reject(f"colour mode {mode} is not supported; save it as an RGB JPEG or PNG")
        im = im.convert("RGB")
    return im.copy() if im.info else im


def pixel_hash(im: Image.Image) -> str:
    """SHA-256 of the normalised pixels (same photo re-saved or renamed -> same hash)."""
    h = hashlib.sha256(f"{im.size[0]}x{im.size[1]}".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def dhash(im: Image.Image, size: int = 8) -> int:
    """64-bit difference hash of a small greyscale copy (robust to resizing and re-encoding)."""
    g = np.asarray(im.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


# ---- the whole batch -------------------------------------------------------------------------
def ingest(inputs: Iterable[InputItem], min_side: int = MIN_SIDE,
           progress: Callable[[float, str], None] | None = None) -> IngestResult:
    """Read, validate and normalise every input; detect exact and near duplicates."""
    result = IngestResult()
    raw = list(iter_raw(inputs))
    by_hash: dict[str, str] = {}
    for i, item in enumerate(raw):
        if isinstance(item, Rejection):
            result.rejected.append(item)
            continue
        name, data = item
        if progress:
            progress(i / max(len(raw), 1), f"reading {name}")
        try:
            img = decode_image(name, data, min_side=min_side)
        except Reject as exc:
            result.rejected.append(Rejection(name, str(exc)))
            continue
        except Exception as exc:  # never let one file stop the batch
            log.exception("unexpected error reading %s", name)
            result.rejected.append(Rejection(name, f"could not be read ({first_line(exc, 120)})"))
            continue
        if img.sha256 in by_hash:
            result.rejected.append(Rejection(name, f"exact duplicate of {by_hash[img.sha256]}; "
                                                   "skipped"))
            continue
        by_hash[img.sha256] = name
        for prev in result.accepted:
            if (prev.dhash ^ img.dhash).bit_count() <= NEAR_DUP_BITS:  # Hamming distance
                img.near_duplicate_of = prev.name
                break
        result.accepted.append(img)
    for r in result.rejected:
        log.info("rejected %s", r)
    return result
