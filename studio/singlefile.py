"""SDXL bases shipped as one ``.safetensors`` file in the original (LDM/SGM) layout.

Most community SDXL finetunes (RealVisXL, Juggernaut XL...) are one checkpoint file with
Stability's original key names (``model.diffusion_model.*``, ``conditioner.embedders.*``,
``first_stage_model.*``). ``--base FILE.safetensors`` (and ``STUDIO_BASE_MODEL``) accept such a
file for generation and training: :func:`local_base` converts it once with diffusers'
single-file loader and saves the pipeline in diffusers format under the workspace's model cache,
keyed by the file's sha256, so every later load (and the trainer) reads that folder.

The conversion needs the SDXL base's configs and tokenizers (not its weights): diffusers fetches
them from ``stabilityai/stable-diffusion-xl-base-1.0`` once into the Hub cache, after which it
works offline; ``STUDIO_SINGLE_FILE_CONFIG`` names another Hub id or a local diffusers folder
whose configs to use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from studio.errors import StudioError, first_line
from studio.fsutil import atomic_write_text

log = logging.getLogger(__name__)

CONFIG_ENV = "STUDIO_SINGLE_FILE_CONFIG"
DEFAULT_CONFIG = "stabilityai/stable-diffusion-xl-base-1.0"
SUFFIXES = (".safetensors",)
_INDEX = "index.json"  # "path|size|mtime" -> sha256, so a file is hashed once
_LOCK = threading.Lock()


class SingleFileError(StudioError, RuntimeError):
    """A single-file base that cannot be converted (one sentence)."""


def is_single_file(source: str | os.PathLike | None) -> bool:
    """True when ``source`` is an existing checkpoint file (not a folder or a Hub id)."""
    if not source:
        return False
    p = Path(str(source)).expanduser()
    return p.suffix.lower() in SUFFIXES and p.is_file()


def cache_dir() -> Path:
    from studio.workspace import default_home

    return default_home() / "models" / "single-file"


def config_source() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def file_digest(file: Path, cache: Path | None = None) -> str:
    """sha256 of ``file``, remembered by path, size and modification time."""
    cache = cache or cache_dir()
    st = file.stat()
    tag = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    index_path = cache / _INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if tag not in index:
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        index[tag] = h.hexdigest()
        atomic_write_text(index_path, json.dumps(index, indent=1))
    return index[tag]


def converted_folder(file: str | os.PathLike, cache: Path | None = None) -> Path:
    """Where the diffusers copy of ``file`` lives (it may not exist yet)."""
    cache = cache or cache_dir()
    return cache / file_digest(Path(file).expanduser(), cache)[:24]


def cached_folder(file: str | os.PathLike) -> Path | None:
    """The converted copy of ``file`` when it was already made, else None (nothing is done)."""
    out = converted_folder(file)
    return out if (out / "model_index.json").is_file() else None


def convert(file: str | os.PathLike, config: str | None = None, cache: Path | None = None) -> Path:
    """The diffusers-format folder of the single-file base ``file`` (converted once)."""
    file = Path(file).expanduser()
    out = converted_folder(file, cache)
    with _LOCK:
        if (out / "model_index.json").is_file():
            return out
        config = config or config_source()
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            from diffusers import StableDiffusionXLPipeline

            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(file), config=config, local_files_only=offline or Path(config).is_dir())
            pipe.save_pretrained(tmp)
            tmp.replace(out)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SingleFileError(
                f"The single-file SDXL base {file.name} could not be converted "
                f"({first_line(exc, 160)}); it must be an SDXL checkpoint in the original layout, "
                f"and the SDXL configs ({config}) must be in the Hub cache or set {CONFIG_ENV} to "
                "a local SDXL folder in diffusers format.") from exc
    log.info("single-file base %s converted to %s", file.name, out)
    return out


def local_base(source: str | os.PathLike) -> str:
    """``source`` itself, or the converted folder when it is a single checkpoint file."""
    return str(convert(source)) if is_single_file(source) else str(source)
