"""Training benchmark: seconds per step and peak GPU memory of the real training loop.

Builds full-size SDXL components (UNet, VAE, both CLIP text encoders) from the public configs of
stabilityai/stable-diffusion-xl-base-1.0 with random weights (speed and memory do not depend on
the weight values, and no weights can be downloaded), then runs ``studio.train.loop`` for the
given presets at 1024 px, batch 1, and prints one JSON object::

    python benchmarks/bench_train.py --presets portrait low-vram portrait+compile --steps 20

Each result also gives the memory pre-flight's estimate for the same config next to the measured
peak (``estimate_error``), and on a GPU the activation figure the measured peak implies
(``calibration``: paste it into ``studio.train.preflight.CALIBRATION``).
    python benchmarks/bench_train.py --tiny      # CPU self-check on the tiny models (tests use it)

Only model loading is replaced (``Trainer._load_models``); LoRA, optimizer, caching, conditioning,
loss and checkpointing are the production code.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Public configs of SDXL base 1.0, shared with the generation benchmark.
from sdxl_random import CLIP_BIGG, CLIP_L, VAE  # noqa: E402
from sdxl_random import UNET_BASE as UNET  # noqa: E402

SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1,
                 prediction_type="epsilon")


def make_trainer_class(tiny: bool):
    import torch

    from studio.train.loop import Trainer
    from studio.train.sdxl import SDXLModels

    class BenchTrainer(Trainer):
        """The production trainer with random-weight models instead of from_pretrained."""

        def _load_models(self) -> SDXLModels:
            from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            from studio.tiny import build_sdxl_components

            tiny_parts = build_sdxl_components()
            dev = self.acc.device
            if tiny:
                unet, vae = tiny_parts["unet"], tiny_parts["vae"]
                te1, te2 = tiny_parts["text_encoder"], tiny_parts["text_encoder_2"]
            else:
                with torch.device(dev):
                    unet = UNet2DConditionModel(**UNET)
                    vae = AutoencoderKL(**VAE)
                    te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L))
                    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG))
            for m in (unet, vae, te1, te2):
                m.requires_grad_(False)
            vae_dtype = torch.float32 if vae.config.get("force_upcast", True) else self.weight_dtype
            vae.to(dev, dtype=vae_dtype)
            for m in (unet, te1, te2):
                m.to(dev, dtype=self.weight_dtype)
            return SDXLModels(
                base="random-weights(sdxl-base-1.0 configs)" if not tiny else "tiny", vae_src=None,
                tokenizers=[tiny_parts["tokenizer"], tiny_parts["tokenizer_2"]],
                noise_scheduler=DDPMScheduler(**SCHEDULER), text_encoders=[te1, te2], unet=unet,
                vae=vae, vae_dtype=vae_dtype, prediction_type="epsilon")

        def _sampling_scheduler(self):
            from diffusers import EulerDiscreteScheduler

            return EulerDiscreteScheduler(**SCHEDULER)

    return BenchTrainer


def make_images(folder: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / "images" / f"{i:04d}.png")
        (folder / "images" / f"{i:04d}.txt").write_text("a photo of tok person")
    return folder


def bench_preset(preset: str, steps: int, warmup: int, tiny: bool, work: Path) -> dict:
    import torch

    from studio.config import load_config
    from studio.train.caches import latents_wanted
    from studio.train.callbacks import TrainCallbacks

    res = 64 if tiny else 1024
    ds = make_images(work / "data", 2, res)
    run = work / f"run-{preset}"
    variant, preset = preset, preset.removesuffix("+compile")
    compiled = ["train.compile_unet=true"] if variant.endswith("+compile") else []
    cfg = load_config(preset=preset, overrides=compiled + [
        f"output_dir={run}", f"data.dataset={ds}", f"data.resolution={res}", "train.batch_size=1",
        f"train.max_train_steps={steps + warmup}", "checkpoints.every_n_steps=100000",
        "validation.every_n_steps=null", "validation.every_n_epochs=null", "validation.at_end=false",
        "data.with_prior_preservation=false"])

    times: list[float] = []

    class Timer(TrainCallbacks):
        def on_start(self, info):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times.append(time.perf_counter())

        def on_step(self, info):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = make_trainer_class(tiny)(cfg, Timer()).run()
    total = time.perf_counter() - t0
    deltas = [b - a for a, b in zip(times, times[1:], strict=False)][warmup:]
    from studio.train import preflight

    est = preflight.estimate(cfg, (None, "measured run"))
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    act_key = "train_checkpointed" if cfg.train.gradient_checkpointing else "train"
    out = {
        "preset": variant, "status": result.status,
        # the timer resets the peak when training starts: compare the training phase
        "preflight_estimate_gib": round(est.phases["training"], 2),
        "estimate_error": round(est.phases["training"] / peak - 1, 3) if peak else None,
        # the activation figure (GiB/sample at 1024 px) this peak implies, for preflight.CALIBRATION
        "calibration": {act_key: round(peak - (est.phases["training"] - est.parts["activations"]), 2)}
        if peak and not tiny else None, "resolution": res, "batch_size": 1,
        "steps_timed": len(deltas),
        "s_per_step": round(sum(deltas) / len(deltas), 4) if deltas else None,
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available() else None,
        "wall_s": round(total, 1),
        "settings": {"rank": cfg.lora.rank, "optimizer": cfg.train.optimizer,
                     "mixed_precision": cfg.train.mixed_precision,
                     "gradient_checkpointing": cfg.train.gradient_checkpointing,
                     "cache_latents": latents_wanted(cfg.data),
                     "cache_text_embeddings": cfg.data.cache_text_embeddings},
    }
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["portrait", "low-vram", "portrait+compile"],
                    help="presets; NAME+compile also compiles the UNet (train.compile_unet)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    ap.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 64 px, CPU (self-check)")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ["STUDIO_DEVICE"] = "cpu"
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
    import torch

    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            report["results"].append(bench_preset(preset, args.steps, args.warmup, args.tiny,
                                                  Path(tmp)))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
