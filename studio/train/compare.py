"""Checkpoint comparison: a grid of checkpoints x validation prompts at fixed seeds.

Each cell is generated once with the checkpoint's LoRA and cached as a PNG in ``RUN/compare/``
(named by a hash of everything that decides its pixels), so opening the grid again costs
nothing. A validation sample the trainer already made for the same step, prompt, seed and size
is reused instead of generated again. The chosen checkpoint can become the run's LoRA.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.fsutil import atomic_write, atomic_write_bytes, read_jsonl
from studio.lora.formats import DIFFUSERS_FILE as LORA_FILE

log = logging.getLogger(__name__)


class CompareError(StudioError, ValueError):
    """A comparison or export request the user must change (one sentence)."""


@dataclass
class Cell:
    step: int
    prompt: str
    seed: int
    path: Path
    reused: bool  # the trainer's own validation sample


@dataclass
class CompareSettings:
    steps: int = 30
    width: int = 1024
    height: int = 1024
    guidance: float = 6.0
    lora_scale: float = 1.0

    def key(self) -> str:
        return f"{self.steps}-{self.width}x{self.height}-{self.guidance}-{self.lora_scale}"


def checkpoint_loras(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, LoRA file) of each complete checkpoint, by step."""
    out = []
    for p in (Path(run_dir) / "checkpoints").glob("checkpoint-*"):
        try:
            step = int(p.name.split("-", 1)[1])
        except (IndexError, ValueError):
            continue
        lora = p / LORA_FILE
        if (p / "COMPLETE").exists() and lora.is_file():
            out.append((step, lora))
    return sorted(out)


def validation_pairs(run_dir: str | Path, trigger: str | None = None) -> list[tuple[str, int]]:
    """The run's (prompt, seed) pairs: from its sample events (what it validated with), else a
    prompt with the trigger at seed 0."""
    pairs: list[tuple[str, int]] = []
    for e in read_jsonl(Path(run_dir) / "events.jsonl"):
        if e.get("type") == "sample" and e.get("prompt") is not None:
            pair = (str(e["prompt"]), int(e.get("seed") or 0))
            if pair not in pairs:
                pairs.append(pair)
    if not pairs:
        pairs.append((f"a photo of {trigger or 'TOK'} person", 0))
    return pairs


def _samples_by_key(run_dir: Path) -> dict[tuple[int, str, int], Path]:
    out = {}
    for e in read_jsonl(run_dir / "events.jsonl"):
        if e.get("type") == "sample" and e.get("path"):
            p = run_dir / str(e["path"])
            if p.is_file():
                out[(int(e.get("step") or 0), str(e.get("prompt")), int(e.get("seed") or 0))] = p
    return out


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def cell_path(run_dir: Path, step: int, lora: Path, prompt: str, seed: int,
              settings: CompareSettings) -> Path:
    h = hashlib.sha1(json.dumps([step, lora.stat().st_mtime_ns, prompt, seed, settings.key()])
                     .encode()).hexdigest()[:16]
    return run_dir / "compare" / f"step-{step:06d}-{h}.png"


def compare_grid(run_dir: str | Path, generator: Any, settings: CompareSettings,
                 pairs: list[tuple[str, int]] | None = None, reuse_samples: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> list[list[Cell]]:
    """Rows of cells, one row per complete checkpoint, one column per (prompt, seed)."""
    from studio.generate.engine import GenerationRequest
    from studio.generate.gallery import png_bytes

    run_dir = Path(run_dir)
    ckpts = checkpoint_loras(run_dir)
    if not ckpts:
        raise CompareError("This run has no complete checkpoint to compare yet.")
    pairs = pairs or validation_pairs(run_dir)
    samples = _samples_by_key(run_dir) if reuse_samples else {}
    total, done = len(ckpts) * len(pairs), 0
    rows: list[list[Cell]] = []
    for step, lora in ckpts:
        row = []
        for prompt, seed in pairs:
            sample = samples.get((step, prompt, seed))
            if sample is not None and _image_size(sample) == (settings.width, settings.height) \
                    and settings.lora_scale == 1.0:
                row.append(Cell(step, prompt, seed, sample, True))
            else:
                out = cell_path(run_dir, step, lora, prompt, seed, settings)
                if not out.is_file():
                    req = GenerationRequest(prompt=prompt, seed=seed, steps=settings.steps,
                                            guidance=settings.guidance, width=settings.width,
                                            height=settings.height, lora=str(lora),
                                            lora_scale=settings.lora_scale)
                    result = generator.generate(req)[0]
                    params = {**result.params, "lora": f"{run_dir.name}@{step}"}
                    atomic_write_bytes(out, png_bytes(result.image, params))
                row.append(Cell(step, prompt, seed, out, False))
            done += 1
            if progress:
                progress(done, total)
        rows.append(row)
    return rows


def export_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Make checkpoint ``step`` the run's LoRA: copied atomically onto
    ``RUN/pytorch_lora_weights.safetensors`` (the Kohya file is written again when the trainer's
    exporter is available). Returns the new LoRA file."""
    run_dir = Path(run_dir)
    src = dict(checkpoint_loras(run_dir)).get(int(step))
    if src is None:
        raise CompareError(f"Checkpoint {step} of this run is missing or incomplete.")
    dst = run_dir / LORA_FILE
    atomic_write(dst, lambda p: shutil.copyfile(src, p))
    _reexport_kohya(run_dir, dst)
    marker = {"checkpoint": int(step), "source": str(src.relative_to(run_dir))}
    atomic_write(run_dir / "selected_checkpoint.json",
                 lambda p: p.write_text(json.dumps(marker) + "\n"))
    log.info("run %s: checkpoint %s exported as the run's LoRA", run_dir.name, step)
    return dst


def _reexport_kohya(run_dir: Path, lora: Path) -> None:
    """Write ``lora_kohya.safetensors`` again from the new diffusers LoRA with the run's alpha
    (the trainer's exporter); if that is impossible, remove the stale Kohya file."""
    kohya = run_dir / "lora_kohya.safetensors"
    try:
        from studio.config import load_config
        from studio.lora.kohya import write_kohya

        cfg = load_config(config_path=run_dir / "config.yaml")
        write_kohya(lora, kohya, cfg.lora.lora_alpha)
    except Exception as exc:  # noqa: BLE001 - never leave a Kohya file from another checkpoint
        if kohya.exists():
            kohya.unlink()
        log.warning("run %s: the Kohya file was not re-exported (%s) and was removed so it "
                    "cannot disagree with the selected checkpoint", run_dir.name, exc)
