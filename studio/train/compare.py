"""Checkpoint comparison: a grid of checkpoints x validation prompts at fixed seeds.

Each cell is generated once with the checkpoint's LoRA and cached as a PNG in ``RUN/compare/``
(named by a hash of everything that decides its pixels), so opening the grid again costs
nothing. A validation sample the trainer already made for the same step, prompt, seed and size
is reused instead of generated again. The chosen checkpoint becomes the run's LoRA with
:func:`studio.runs.export.export_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.fsutil import atomic_write_bytes
from studio.runs.folder import RunError, RunFolder

log = logging.getLogger(__name__)


class CompareError(StudioError, ValueError):
    """A comparison request the user must change (one sentence)."""


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


def compare_settings(run_dir: str | Path) -> CompareSettings:
    """The run's own validation settings (denoising steps, guidance, training resolution); the
    config defaults when the run's config cannot be read."""
    from studio.config import TrainConfig

    try:
        cfg = RunFolder(run_dir).config()
    except RunError:
        cfg = TrainConfig()
    res = cfg.data.resolution
    return CompareSettings(steps=cfg.validation.steps, width=res, height=res,
                           guidance=cfg.validation.guidance)


def validation_pairs(run_dir: str | Path) -> list[tuple[str, int]]:
    """The run's (prompt, seed) pairs: from its sample events (what it validated with), else
    the run's instance prompt at seed 0."""
    run = RunFolder(run_dir)
    pairs: list[tuple[str, int]] = []
    for e in run.events():
        if e.get("type") == "sample" and e.get("prompt") is not None:
            pair = (str(e["prompt"]), int(e.get("seed") or 0))
            if pair not in pairs:
                pairs.append(pair)
    return pairs or [(run.instance_prompt(), 0)]


def _samples_by_key(run: RunFolder) -> dict[tuple[int, str, int], Path]:
    out = {}
    for e in run.events():
        if e.get("type") == "sample" and e.get("path"):
            p = run.path / str(e["path"])
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
    return RunFolder(run_dir).compare_dir / f"step-{step:06d}-{h}.png"


def _render(generator: Any, out: Path, settings: CompareSettings, prompt: str, seed: int,
            lora: Path | None, label: str) -> None:
    """Generate one cell into ``out`` (with the LoRA file ``lora``, or none)."""
    from studio.generate.gallery import png_bytes
    from studio.generate.request import GenerationRequest

    req = GenerationRequest(prompt=prompt, seed=seed, steps=settings.steps,
                            guidance=settings.guidance, width=settings.width,
                            height=settings.height, lora=str(lora) if lora else None,
                            lora_scale=settings.lora_scale)
    result = generator.generate(req)[0]
    atomic_write_bytes(out, png_bytes(result.image, {**result.params, "lora": label}))


def base_cells(run_dir: str | Path, generator: Any, settings: CompareSettings,
               pairs: list[tuple[str, int]]) -> list[Cell]:
    """The (prompt, seed) pairs without any LoRA (step 0), generated once and cached beside
    the checkpoint cells."""
    run = RunFolder(run_dir)
    cells = []
    for prompt, seed in pairs:
        h = hashlib.sha1(json.dumps(["base", prompt, seed, settings.key()]).encode()).hexdigest()
        out = run.compare_dir / f"base-{h[:16]}.png"
        if not out.is_file():
            _render(generator, out, settings, prompt, seed, None, "none")
        cells.append(Cell(0, prompt, seed, out, False))
    return cells


def compare_grid(run_dir: str | Path, generator: Any, settings: CompareSettings,
                 pairs: list[tuple[str, int]] | None = None, reuse_samples: bool = True,
                 progress: Callable[[int, int], None] | None = None,
                 steps: list[int] | None = None) -> list[list[Cell]]:
    """Rows of cells, one row per complete checkpoint (of ``steps`` when given), one column per
    (prompt, seed)."""
    run = RunFolder(run_dir)
    run_dir = run.path
    ckpts = [(c.step, c.lora_path) for c in run.checkpoints() if steps is None or c.step in steps]
    if not ckpts:
        raise CompareError("This run has no complete checkpoint to compare yet.")
    pairs = pairs or validation_pairs(run_dir)
    samples = _samples_by_key(run) if reuse_samples else {}
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
                    _render(generator, out, settings, prompt, seed, lora, f"{run_dir.name}@{step}")
                row.append(Cell(step, prompt, seed, out, False))
            done += 1
            if progress:
                progress(done, total)
        rows.append(row)
    return rows
