"""The whole product from the command line, each step feeding the next as a user runs it:
photos -> `prepare` -> `train` -> `generate` with the LoRA -> `bundle`."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import dataset_photos as dp
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "studio", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args[0]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def test_photos_to_lora_to_images(tmp_path, tiny_models, home):
    import os

    env = {**os.environ, "STUDIO_HOME": str(home), "STUDIO_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
           "STUDIO_FACEXLIB_DIR": str(tmp_path / "no-weights")}
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, im in dp.good_variants().items():
        dp.save(im, photos / f"{name}.jpg")

    dataset = tmp_path / "dataset"
    cli("prepare", photos, "--out", dataset, "--trigger", "ohwx", "--class-word", "person",
        "--detector", "haar", "--captioner", tiny_models["captioner"], env=env)
    meta = [json.loads(x) for x in (dataset / "images" / "metadata.jsonl").read_text().splitlines()]
    assert len(meta) >= 3 and all(m["text"].startswith("a photo of ohwx person") for m in meta)

    run = tmp_path / "run"
    cli("train", "--dataset", dataset, "--out", run, "--preset", "portrait", "--base",
        tiny_models["base"], "--no-progress", "--set", "data.resolution=64",
        "train.max_train_steps=6", "checkpoints.every_n_steps=3", "validation.steps=2",
        "validation.num_images=1", "validation.every_n_steps=6", "train.learning_rate=1e-2",
        env=env)
    lora = run / "pytorch_lora_weights.safetensors"
    assert lora.is_file() and (run / "lora_kohya.safetensors").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trigger"] == "ohwx"
    assert json.loads((dataset / "dataset.json").read_text())["hash"] == manifest["dataset"]["hash"]
    assert "ohwx" in (run / "README.md").read_text()

    def generate(out: Path, *extra: str) -> np.ndarray:
        cli("generate", "--base", tiny_models["base"], "--prompt", "a photo of ohwx person",
            "--out", out, "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
            *extra, env=env)
        (png,) = out.glob("*.png")
        return np.asarray(Image.open(png).convert("RGB")).astype(int)

    plain = generate(tmp_path / "plain")
    tuned = generate(tmp_path / "tuned", "--lora", str(run), "--lora-scale", "1.0")
    print("mean pixel change with the trained LoRA:", np.abs(plain - tuned).mean())
    assert np.abs(plain - tuned).mean() > 0.5

    bundle = tmp_path / "bundle.zip"
    cli("bundle", run, "--out", bundle, env=env)
    with zipfile.ZipFile(bundle) as zf:
        names = zf.namelist()
    assert any(n.endswith("pytorch_lora_weights.safetensors") for n in names)
    assert any(n.endswith("lora_kohya.safetensors") for n in names)
