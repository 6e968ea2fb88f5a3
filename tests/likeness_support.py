"""Run folders whose images are real photos, for the likeness tests: the checkpoint's "samples"
and "person" (bleed) images are photos of the astronaut, of Grace Hopper or of no one."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dataset_photos as dp
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from share_fixtures import INSTANCE_PROMPT, save_lora

from studio.config import TrainConfig

SIZE = 512
PERSON = "a photo of a person"


def face_dataset(out: Path) -> Path:
    """A prepared dataset of the four astronaut variants (the subject), 512 px."""
    (out / "images").mkdir(parents=True)
    (out / "originals").mkdir()
    lines = []
    for i, im in enumerate(dp.good_variants().values()):
        im.convert("RGB").resize((SIZE, SIZE)).save(out / "images" / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": INSTANCE_PROMPT}))
    (out / "images" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (out / "dataset.json").write_text(json.dumps({
        "name": "astro", "trigger": "TOK", "class_word": "person", "template": "a photo of {}",
        "hash": "astro-4", "created": "2026-01-01T00:00:00Z", "count": 4, "framing": "face"}))
    return out


def astronauts() -> list[Image.Image]:
    a = dp.astronaut()
    v = list(dp.good_variants().values())
    return [v[0], v[1], a.crop((80, 0, 480, 400)), a.crop((120, 20, 420, 320)).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)]


def graces() -> list[Image.Image]:
    return list(dp.grace_variants().values())


def _png(im: Image.Image, path: Path, prompt: str, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("prompt", prompt)
    info.add_text("seed", str(seed))
    im.convert("RGB").resize((SIZE, SIZE)).save(path, "PNG", pnginfo=info)
    return path.as_posix()


def build_face_run(run: Path, dataset: Path, steps: dict[int, tuple[list, list]],
                   baseline: list[Image.Image], finished: bool = True,
                   base: str | Path | None = None) -> Path:
    """A run with a checkpoint per step; ``steps[N]`` = (sample photos, bleed photos), two
    each (seeds 0 and 1); ``baseline``: the bleed prompt without the LoRA; ``base``: the model
    the LoRA files are for (the tiny base: push and bundle check the files against it)."""
    run.mkdir(parents=True)
    cfg = {"model": {"base": str(base)} if base else {}, "data": {"dataset": str(dataset), "resolution": SIZE},
           "lora": {"rank": 4, "alpha": 4}, "train": {"max_train_steps": max(steps)},
           "validation": {"prompts": [INSTANCE_PROMPT], "num_images": 2}}
    (run / "config.yaml").write_text(TrainConfig.model_validate(cfg).to_yaml())
    now = time.time()
    events = [{"type": "start", "step": 0, "total_steps": max(steps), "resumed_from": None}]
    for step, (samples, bleed) in sorted(steps.items()):
        ck = run / "checkpoints" / f"checkpoint-{step:06d}"
        ck.mkdir(parents=True)
        save_lora(ck, seed=step)
        (ck / "COMPLETE").write_text("ok")
        events.append({"type": "step", "step": step, "total_steps": max(steps), "loss": 0.1,
                       "lr": 1e-4, "epoch": 0, "steps_per_s": 1.0, "eta_s": 0, "mem_gb": 0})
        for seed, (s, b) in enumerate(zip(samples, bleed, strict=True)):
            rel = f"samples/step-{step:06d}/{seed}.png"
            _png(s, run / rel, INSTANCE_PROMPT, seed)
            _png(b, run / "bleed" / f"step-{step:06d}" / f"{seed}.png", PERSON, seed)
            events.append({"type": "sample", "step": step, "prompt": INSTANCE_PROMPT,
                           "seed": seed, "path": rel})
        events.append({"type": "checkpoint", "step": step,
                       "path": f"checkpoints/checkpoint-{step:06d}"})
    for seed, b in enumerate(baseline):
        _png(b, run / "bleed" / "base" / f"{seed}.png", PERSON, seed)
    if finished:
        last = max(steps)
        save_lora(run, seed=last)
        events.append({"type": "end", "status": "finished", "step": last, "message": "done"})
        (run / "manifest.json").write_text(json.dumps({
            "trigger": "TOK", "class_word": "person", "instance_prompt": INSTANCE_PROMPT,
            "base_model": str(base) if base else "base-model", "steps": last}))
    (run / "events.jsonl").write_text("".join(json.dumps({**e, "time": now}) + "\n"
                                              for e in events))
    return run
