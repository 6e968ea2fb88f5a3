"""Generation speed and peak GPU memory: seconds per image, with and without the refiner.

    python benchmarks/bench_generate.py                 # full-size SDXL (random weights), GPU
    python benchmarks/bench_generate.py --tiny          # tiny models on CPU (checks the script)

Prints one JSON object per configuration. Runs the same Generator code as the app (scheduler
switching, LoRA adapters, refiner hand-off), with random weights built from the public configs.
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
    args = p.parse_args(argv)

    import torch

    from studio.generate.engine import Generator
    from studio.generate.request import GenerationRequest

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

    results = []
    for refiner in (False, True):
        req = GenerationRequest(prompt="a photo of TOK person, portrait", seed=1, steps=steps,
                                width=size, height=size, scheduler=args.scheduler,
                                refiner=refiner, refiner_switch=0.8)
        gen.generate(req)  # warm-up (kernels, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            gen.generate(req)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        res = {
            "bench": "generate", "refiner": refiner, "size": size, "steps": steps,
            "scheduler": args.scheduler, "dtype": str(dtype).replace("torch.", ""),
            "s_per_image_median": round(sorted(times)[len(times) // 2], 4),
            "s_per_image_min": round(min(times), 4),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device == "cuda" else None,
            "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor()
            or "cpu",
            "torch": torch.__version__,
        }
        results.append(res)
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
