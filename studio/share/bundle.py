"""Export a run as one zip for users who do not use the Hub.

The zip holds the same files a push uploads: the diffusers LoRA, the Kohya LoRA, the model card
(``README.md``), ``config.yaml``, ``manifest.json`` and the samples, under one top folder named
after the run. It is written atomically: a failed export never leaves a partial zip.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from studio.fsutil import atomic_write
from studio.share.card import build_card, validate_card
from studio.share.runfiles import ShareError, collect_run_files

log = logging.getLogger(__name__)

_STORED = (".safetensors", ".png", ".jpg", ".jpeg", ".webp")  # already compressed or binary


def export_run_bundle(run_dir: str | Path, out_zip: str | Path,
                      checkpoint: int | None = None) -> Path:
    """Write the run's bundle to ``out_zip`` and return its path."""
    out = Path(out_zip).expanduser()
    if out.suffix.lower() != ".zip":
        raise ShareError(f"The bundle file {out.name} must end in .zip.")
    rf = collect_run_files(run_dir, checkpoint)
    try:
        top = rf.run_dir.name + (f"-step{int(checkpoint):06d}" if checkpoint is not None else "")
        card = build_card(rf, None)
        validate_card(card, set(rf.files))

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{top}/README.md", card)
                for rel, src in sorted(rf.files.items()):
                    comp = zipfile.ZIP_STORED if rel.lower().endswith(_STORED) else \
                        zipfile.ZIP_DEFLATED
                    zf.write(src, f"{top}/{rel}", compress_type=comp)

        try:
            path = atomic_write(out, write)
        except OSError as exc:
            raise ShareError(f"Could not write the bundle {out} ({exc.strerror or exc}).") from exc
    finally:
        rf.cleanup()
    log.info("exported run %s to %s", rf.run_dir.name, path)
    return path
