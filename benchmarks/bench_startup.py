"""Start-up benchmark: seconds from ``python app.py --demo`` to the first page (HTTP 200 on /),
and from ``python -m studio train`` (tiny models, CPU) to its first training step.

    python benchmarks/bench_startup.py --repeats 3      # prints one JSON object

The app runs on a free local port with a fresh STUDIO_HOME; the training run uses the tiny
random-weight models (built once, not timed) and a 2-image dataset at 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, STUDIO_HOME=str(home), STUDIO_DEVICE="cpu", HF_HUB_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return env


def app_to_first_page(tmp: Path, timeout: float = 180.0) -> float:
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--demo", "--port", str(port)], cwd=ROOT,
                            env=_env(tmp / f"home-{port}"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200 and r.read(64):
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}")
        raise TimeoutError("no first page")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def train_to_first_step(tmp: Path, base: Path, dataset: Path, k: int,
                        timeout: float = 300.0) -> float:
    run = tmp / f"run-{k}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", "--no-progress", "--dataset",
                             str(dataset), "--base", str(base), "--out", str(run), "--set",
                             "data.resolution=64", "train.max_train_steps=2", "lora.rank=4",
                             "validation.at_end=false"], cwd=ROOT, env=_env(tmp / "home"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = run / "events.jsonl"
    try:
        while time.perf_counter() - t0 < timeout:
            if events.exists() and '"type": "step"' in events.read_text(errors="replace"):
                return time.perf_counter() - t0
            if proc.poll() is not None and not events.exists():
                raise RuntimeError(f"training exited with {proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError("no first step")
    finally:
        proc.wait(timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "app_first_page_s": [],
           "train_first_step_s": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for _ in range(args.repeats):
            out["app_first_page_s"].append(round(app_to_first_page(tmp), 2))
        if not args.skip_train:
            from _train_support import make_dataset

            from studio.tiny import build_tiny_models

            base = build_tiny_models(tmp / "tiny")["base"]
            ds = make_dataset(tmp / "ds", n=2)
            for k in range(args.repeats):
                out["train_first_step_s"].append(round(train_to_first_step(tmp, base, ds, k), 2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
