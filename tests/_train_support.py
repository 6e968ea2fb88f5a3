"""Helpers shared by the trainer tests (tiny datasets per the dataset contract, configs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a photo of tok person smiling", "a photo of tok person in a hat",
            "a photo of tok person with glasses", "a photo of tok person outdoors"]


def make_dataset(out: Path, n: int = 4, size: tuple[int, int] = (96, 80)) -> Path:
    """A prepared DATASET/ (images/ + metadata.jsonl + dataset.json) from skimage photos."""
    import numpy as np
    from PIL import Image
    from skimage import data

    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "originals").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        arr = srcs[i % len(srcs)] if i < len(srcs) else np.random.default_rng(i).integers(
            0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).convert("RGB").resize(size).save(out / "images" / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": CAPTIONS[i % len(CAPTIONS)]}))
    (out / "images" / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "dataset.json").write_text(json.dumps({
        "name": out.name, "trigger": "tok", "class_word": "person", "template": "a photo of {}",
        "hash": "test-hash-" + str(n), "created": "2026-01-01T00:00:00Z", "count": n,
        "framing": "face"}), encoding="utf-8")
    return out


def fast_overrides(run: Path, dataset: Path, base: Path, steps: int = 2) -> list[str]:
    """Overrides for a fast CPU run at 64 px on the tiny models."""
    return [f"output_dir={run}", f"data.dataset={dataset}", f"model.base={base}",
            "data.resolution=64", f"train.max_train_steps={steps}", "lora.rank=4",
            "checkpoints.every_n_steps=1000", "validation.at_end=false", "validation.steps=2",
            "validation.num_images=1"]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"STUDIO_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    e.update(extra)
    return e


def studio_train(*args: str, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "studio", "train", "--no-progress", *args],
                            cwd=ROOT, env=env(**(extra_env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for(pred, timeout: float = 30.0, proc: subprocess.Popen | None = None, what: str = "condition",
             interval: float = 0.2, detail=None):
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` passes. With
    ``proc``, fail at once when that process exits; ``detail()`` adds context to the failure."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) waiting for {what}:\n{err[-3000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{detail()}" if detail else ""))


def steps_of(events: list[dict]) -> list[int]:
    return [e["step"] for e in events if e["type"] == "step"]
