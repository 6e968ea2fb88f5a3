"""Validation sampling: images of the LoRA being trained, written into the run folder's
``samples/step-<step>/`` with their settings in the PNG text chunks, each reported as a
"sample" event."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.runs.folder import RunFolder
from studio.train.sdxl import pipeline_image

log = logging.getLogger(__name__)


def validation_prompts(cfg: TrainConfig, instance_prompt: str) -> list[str]:
    """The configured validation prompts, else the instance prompt."""
    return list(cfg.validation.prompts) or [instance_prompt]


def write_samples(pipe, run: RunFolder, step: int, prompts: list[str], cfg: TrainConfig,
                  autocast: Callable[[], Any], on_sample: Callable[[dict[str, Any]], None],
                  out_dir: Path | None = None, prompt_map: Callable[[str], str] | None = None
                  ) -> list[dict[str, Any]]:
    """``validation.num_images`` images per prompt (seed ``validation.seed + i``) as
    ``samples/step-<step>/<k>.png`` (or ``out_dir/<k>.png``); returns the sample records (step,
    prompt, seed, path relative to the run). ``prompt_map`` (pivotal tuning) turns each prompt
    into what the pipeline gets; the records keep the prompt as written, which Generate maps the
    same way."""
    import torch
    from PIL.PngImagePlugin import PngInfo

    from studio.fsutil import atomic_write

    v = cfg.validation
    out_dir = out_dir or run.sample_dir(step)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    k = 0
    for prompt in prompts:
        for i in range(v.num_images):
            seed = v.seed + i
            g = torch.Generator(device="cpu").manual_seed(seed)
            img = pipeline_image(pipe, autocast, prompt=prompt_map(prompt) if prompt_map else prompt,
                                 negative_prompt=v.negative_prompt or None,
                                 num_inference_steps=v.steps, guidance_scale=v.guidance,
                                 height=cfg.data.resolution, width=cfg.data.resolution, generator=g)
            info = PngInfo()
            for key, val in (("prompt", prompt), ("seed", str(seed)), ("step", str(step)),
                             ("negative_prompt", v.negative_prompt), ("steps", str(v.steps)),
                             ("guidance", str(v.guidance))):
                info.add_text(key, val)
            path = out_dir / f"{k}.png"
            atomic_write(path, lambda p, im=img, inf=info: im.save(p, "PNG", pnginfo=inf))
            rec = {"step": step, "prompt": prompt, "seed": seed,
                   "path": path.relative_to(run.path).as_posix()}
            on_sample(rec)
            results.append(rec)
            k += 1
    return results


def sample(models: list[Any], make_pipeline: Callable[[], Any], run: RunFolder, step: int,
           prompts: list[str], cfg: TrainConfig, autocast: Callable[[], Any],
           on_sample: Callable[[dict[str, Any]], None],
           prompt_map: Callable[[str], str] | None = None) -> list[dict[str, Any]]:
    """Validation images at ``step`` with the pipeline ``make_pipeline()`` builds over the
    training ``models`` (the UNet and both text encoders, unwrapped), which are in eval mode
    meanwhile (no LoRA dropout) and get their modes back after; see :func:`write_samples`."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        return write_samples(make_pipeline(), run, step, prompts, cfg, autocast, on_sample,
                             prompt_map=prompt_map)
    finally:
        for m, training in zip(models, modes, strict=True):
            m.train(training)
