"""Likeness benchmark: steps per second of the ``portrait-pivotal`` preset (pivotal tuning +
face-weighted loss + Prodigy) against ``portrait``, and of each technique alone.

Runs the production trainer (``bench_train.make_trainer_class``: only model loading is replaced)
on a prepared dataset with a trigger and face masks, and prints one JSON object::

    python benchmarks/bench_likeness.py --tiny            # tiny models, 64 px, CPU
    python benchmarks/bench_likeness.py --steps 20        # full-size random-weight SDXL, 1024 px

Each variant is a preset plus overrides; ``s_per_step`` is the mean wall time of the timed steps
(after ``--warmup`` untimed ones) and ``cpu_s_per_step`` the mean CPU time of this process over
them (the fairer number on a shared CPU, where other processes stretch the wall time);
``relative`` and ``cpu_relative`` are the ratios to ``portrait``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_trainer_class  # noqa: E402

VARIANTS = {
    "portrait": ("portrait", []),
    "portrait-pivotal": ("portrait-pivotal", []),
    "+pivotal only": ("portrait", ["lora.train_text_embeddings=true"]),
    "+face masks only": ("portrait", ["data.mask_weight=0.3"]),
    "+prodigy only": ("portrait", ["train.optimizer=prodigy", "train.learning_rate=1.0"]),
}


def make_dataset(folder: Path, n: int, size: int) -> Path:
    """A prepared dataset (trigger "tok", class "person") whose crops all have a face mask."""
    import numpy as np
    from PIL import Image, ImageDraw

    from studio.dataset import store

    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        crop = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).ellipse((size // 4, size // 8, 3 * size // 4, 7 * size // 8), fill=255)
        entries.append(store.Entry(f"{i + 1:04d}.png", crop, crop, "a photo of tok person",
                                   mask=mask))
    return store.write_dataset(folder, entries, {"trigger": "tok", "class_word": "person"}, {}).path


def bench(name: str, steps: int, warmup: int, tiny: bool, work: Path, ds: Path) -> dict:
    import torch

    from studio.config import load_config
    from studio.train.callbacks import TrainCallbacks

    preset, extra = VARIANTS[name]
    res = 64 if tiny else 1024
    cfg = load_config(preset=preset, overrides=[
        f"output_dir={work / ('run-' + str(abs(hash(name))))}", f"data.dataset={ds}",
        f"data.resolution={res}", f"train.max_train_steps={steps + warmup}",
        "checkpoints.every_n_steps=100000", "validation.every_n_steps=null",
        "validation.at_end=false", *extra])
    times: list[tuple[float, float]] = []

    class Timer(TrainCallbacks):
        def on_start(self, info):
            times.append((time.perf_counter(), time.process_time()))

        def on_step(self, info):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append((time.perf_counter(), time.process_time()))

    result = make_trainer_class(tiny)(cfg, Timer()).run()
    timed = times[warmup:]
    n = len(timed) - 1
    s = (timed[-1][0] - timed[0][0]) / n if n > 0 else None
    cpu = (timed[-1][1] - timed[0][1]) / n if n > 0 else None
    return {"variant": name, "status": result.status, "steps_timed": max(n, 0),
            "s_per_step": round(s, 4) if s else None,
            "steps_per_s": round(1 / s, 3) if s else None,
            "cpu_s_per_step": round(cpu, 4) if cpu else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 64 px, CPU")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ["STUDIO_DEVICE"] = "cpu"
    import torch

    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "tiny": args.tiny, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_dataset(Path(tmp) / "ds", 4, 64 if args.tiny else 1024)
        for name in args.variants:
            report["results"].append(bench(name, args.steps, args.warmup, args.tiny, Path(tmp), ds))
    for key, rel in (("s_per_step", "relative"), ("cpu_s_per_step", "cpu_relative")):
        base = next((r[key] for r in report["results"] if r["variant"] == "portrait"), None)
        for r in report["results"]:
            r[rel] = round(r[key] / base, 2) if base and r[key] else None
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
