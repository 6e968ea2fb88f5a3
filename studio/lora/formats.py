"""The LoRA file formats a run ships, in one table.

The trainer writes the diffusers file (``pytorch_lora_weights.safetensors``, peft key names plus
diffusers' adapter metadata); every other format is derived from it by the format's writer.
The trainer, checkpoint export, push, bundle and the model card iterate over
:data:`EXPORT_FORMATS`, so a new format is one entry here (and its writer module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"

Writer = Callable[[Path, Path, "float | None"], Path]


@dataclass(frozen=True)
class ExportFormat:
    name: str
    file_name: str
    label: str  # who reads it, for cards and the UI
    write: Writer | None  # (diffusers file, out file, lora_alpha) -> out file; None: the source


def _write_kohya(src: Path, dst: Path, lora_alpha: float | None) -> Path:
    from studio.lora.kohya import write_kohya

    return write_kohya(src, dst, lora_alpha)


DIFFUSERS = ExportFormat("diffusers", DIFFUSERS_FILE, "diffusers (load_lora_weights)", None)
KOHYA = ExportFormat("kohya", KOHYA_FILE, "AUTOMATIC1111 / Forge / ComfyUI (Kohya keys)",
                     _write_kohya)
EXPORT_FORMATS: tuple[ExportFormat, ...] = (DIFFUSERS, KOHYA)


def derived_formats() -> tuple[ExportFormat, ...]:
    """The formats written from the diffusers file."""
    return tuple(f for f in EXPORT_FORMATS if f.write is not None)


def export_files(folder: str | Path) -> dict[str, Path]:
    """{file name: path} of the formats present in ``folder``, in table order."""
    folder = Path(folder)
    return {f.file_name: folder / f.file_name for f in EXPORT_FORMATS
            if (folder / f.file_name).is_file()}


def write_exports(folder: str | Path, lora_alpha: float | None = None) -> dict[str, Path]:
    """Write every derived format next to ``folder/pytorch_lora_weights.safetensors``; returns
    {format name: file}. ``lora_alpha`` None: taken from the file's adapter metadata."""
    folder = Path(folder)
    src = folder / DIFFUSERS_FILE
    out = {DIFFUSERS.name: src}
    for fmt in derived_formats():
        out[fmt.name] = fmt.write(src, folder / fmt.file_name, lora_alpha)
    return out
