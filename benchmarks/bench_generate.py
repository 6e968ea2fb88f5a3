"""Generation speed and peak GPU memory: seconds per image, with and without the refiner.

    python benchmarks/bench_generate.py                 # full-size SDXL (random weights), GPU
    python benchmarks/bench_generate.py --tiny          # tiny models on CPU (checks the script)

Prints one JSON object per configuration: the plain diffusers pipeline (bf16, its defaults), then
the studio's engine in each mode (speed off, speed, speed with the refiner, --compile, and on a
GPU model and sequential CPU offload), with s/image, it/s, peak GiB and the ratio to plain.
Runs the same Generator code as the app (scheduler switching, LoRA adapters, refiner hand-off),
with random weights built from the public configs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU (fast self-check)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scheduler", default="DPM++ 2M Karras")
    p.add_argument("--compile", action="store_true", help="also the torch.compile'd UNet")
    args = p.parse_args(argv)

    import torch

    from studio.generate.engine import Generator

    if args.tiny:
        device, dtype = "cpu", torch.float32
        tmp = tempfile.mkdtemp()
        from studio.tiny import build_tiny_models

        paths = build_tiny_models(tmp)
        gen = Generator(base=str(paths["base"]), refiner=str(paths["refiner"]), device=device,
                        dtype=dtype)
        size, steps = 64, min(args.steps, 4)
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA GPU; use --tiny for a CPU self-check", file=sys.stderr)
            return 2
        from sdxl_random import build_full_sdxl

        device = "cuda"
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        pipes = build_full_sdxl(dtype, device, refiner=True)
        gen = Generator(base="random-full-size-base", refiner="random-full-size-refiner",
                        device=device, dtype=dtype, base_pipe=pipes["base"],
                        refiner_pipe=pipes["refiner"])
        size, steps = args.size, args.steps

    import os

    from studio.generate import performance as perf

    configs = [("plain diffusers", None, False), ("studio", "speed-off", False),
               ("studio", "speed", False), ("studio", "speed", True)]
    if args.compile:
        configs.append(("studio", "speed+compile", False))
    if device == "cuda":
        configs += [("studio", "model-offload", False), ("studio", "model-offload", True),
                    ("studio", "sequential-offload", False)]
    plain_s = None
    for kind, mode, refiner in configs:
        os.environ[perf.SPEED_ENV] = "0" if mode == "speed-off" else "1"
        os.environ[perf.COMPILE_ENV] = "1" if mode == "speed+compile" else "0"
        os.environ[perf.MEMORY_ENV] = mode if mode and "offload" in mode else "gpu"
        repeats = 1 if mode == "sequential-offload" else args.repeats
        run = _plain(gen, size, steps) if mode is None else _studio(gen, args, size, steps, refiner)
        res = _timed(run, repeats, device)
        plain_s = res["s_per_image_median"] if mode is None else plain_s
        res.update({"bench": "generate", "engine": kind, "mode": mode or "defaults",
                    "refiner": refiner, "size": size, "steps": steps,
                    "it_per_s": round(steps / res["s_per_image_median"], 2),
                    "ratio_to_plain": round(res["s_per_image_median"] / plain_s, 3),
                    "memory_plan": gen.modes if mode else None,
                    "dtype": str(dtype).replace("torch.", ""), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if device == "cuda"
                    else platform.processor() or "cpu"})
        print(json.dumps(res), flush=True)
    return 0


def _plain(gen, size: int, steps: int):
    """The plain diffusers pipeline call (its default scheduler), same seed and size."""
    import torch

    pipe = gen.base_pipe()

    def run():
        pipe(prompt="a photo of TOK person, portrait", num_inference_steps=steps, width=size,
             height=size, generator=torch.Generator("cpu").manual_seed(1))
    return run


def _studio(gen, args, size: int, steps: int, refiner: bool):
    from studio.generate.request import GenerationRequest

    req = GenerationRequest(prompt="a photo of TOK person, portrait", seed=1, steps=steps,
                            width=size, height=size, scheduler=args.scheduler, refiner=refiner,
                            refiner_switch=0.8)
    return lambda: gen.generate(req)


def _timed(run, repeats: int, device: str) -> dict:
    import torch

    run()  # warm-up (kernels, allocator, compilation)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"s_per_image_median": round(sorted(times)[len(times) // 2], 4),
            "s_per_image_min": round(min(times), 4),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device == "cuda" else None}


if __name__ == "__main__":
    raise SystemExit(main())
