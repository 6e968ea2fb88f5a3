"""Data-path benchmark: seconds per training step on the tiny models (CPU) with 1024 px photos.

The tiny UNet makes each step cheap, so what this measures is the per-step overhead of the
data path (decode, exif-transpose, resize, crop, flip, collate) next to a tiny forward and
backward pass. It runs the production trainer (only model loading is replaced, as in
bench_train.py) for three data settings and prints one JSON object:

    python benchmarks/bench_data.py                  # 40 timed steps per case
    python benchmarks/bench_data.py --per-step-decode   # also the old path: decode every step

- ``center``: center crop, no flip (each image is decoded and transformed once per run);
- ``random``: random crop and flip (decoded and resized once, cropped and flipped per step);
- ``cached``: ``data.cache_latents`` (the image is not touched after the cache is filled).

``data_ms_per_step`` is the time spent making the step's items (the data path alone, less
sensitive to other load on the machine than ``s_per_step``).

``--per-step-decode`` adds the same cases with the dataset's image memory emptied before every
item, which is what the data path did before it kept images (every step decoded the PNG again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = {
    "center": [],
    "random": ["data.crop=random", "data.random_flip=true"],
    "cached": ["data.cache_latents=true"],
}


def make_photos(folder: Path, n: int, size: int) -> Path:
    """``n`` photo-like PNGs (scikit-image's sample photos) resized to ``size`` px."""
    from PIL import Image
    from skimage import data

    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(srcs[i % len(srcs)]).convert("RGB").resize((size, size)).save(
            folder / "images" / f"{i:04d}.png")
        (folder / "images" / f"{i:04d}.txt").write_text("a photo of tok person")
    return folder


def forget_images(dataset) -> None:
    """Make every item decode its photo again (the data path before images were kept)."""
    item = dataset.item

    def uncached(i, epoch=0):
        for name in ("_images", "_ready"):
            getattr(dataset, name, {}).clear()
        dataset.pixels = True  # the old path read the photos even with cached latents
        return item(i, epoch)

    dataset.item = uncached


def run_case(name: str, overrides: list[str], steps: int, warmup: int, work: Path,
             ds: Path, per_step_decode: bool) -> dict:
    from bench_train import make_trainer_class

    from studio.config import load_config
    from studio.dataset.sources import Example
    from studio.train.callbacks import TrainCallbacks

    cfg = load_config(overrides=[
        f"output_dir={work / ('run-' + name + ('-old' if per_step_decode else ''))}",
        f"data.dataset={ds}", "data.resolution=64", "train.batch_size=1", "lora.rank=4",
        f"train.max_train_steps={steps + warmup}", "checkpoints.every_n_steps=100000",
        "validation.every_n_steps=null", "validation.every_n_epochs=null",
        "validation.at_end=false", "data.with_prior_preservation=false", *overrides])
    times: list[float] = []
    loads = [0]

    class Timer(TrainCallbacks):
        def on_start(self, info):
            times.append(time.perf_counter())
            loads[0], item_s[0] = 0, 0.0

        def on_step(self, info):
            times.append(time.perf_counter())

    base_cls = make_trainer_class(tiny=True)

    item_s = [0.0]

    class Trainer(base_cls):
        def _build(self):
            trained = super()._build()
            if per_step_decode:
                forget_images(self.dataset)
            item = self.dataset.item

            def timed(i, epoch=0):
                t = time.perf_counter()
                out = item(i, epoch)
                item_s[0] += time.perf_counter() - t
                return out

            self.dataset.item = timed
            return trained

    real_load = Example.load

    def counting_load(self):
        loads[0] += 1
        return real_load(self)

    Example.load = counting_load
    try:
        result = Trainer(cfg, Timer()).run()
    finally:
        Example.load = real_load
    deltas = [b - a for a, b in zip(times, times[1:], strict=False)][warmup:]
    return {"case": name, "per_step_decode": per_step_decode, "status": result.status,
            "steps_timed": len(deltas), "s_per_step": round(sum(deltas) / len(deltas), 4),
            "data_ms_per_step": round(1000 * item_s[0] / (steps + warmup), 2),
            "image_loads_during_training": loads[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024, help="size of the PNGs on disk")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--per-step-decode", action="store_true",
                    help="also run each case with the old per-step decode")
    args = ap.parse_args(argv)
    os.environ["STUDIO_DEVICE"] = "cpu"
    import torch

    torch.set_num_threads(1)
    report = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} CPUs, torch threads 1",
              "torch": torch.__version__, "images": args.images, "png_px": args.size,
              "resolution": 64, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_photos(Path(tmp) / "data", args.images, args.size)
        for name in args.cases:
            modes = [True, False] if args.per_step_decode else [False]
            for old in modes:
                report["results"].append(run_case(name, CASES[name], args.steps, args.warmup,
                                                  Path(tmp), ds, old))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
