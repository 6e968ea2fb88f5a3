"""The training benchmark runs end to end on the tiny models (CPU self-check)."""

from __future__ import annotations

import json
import subprocess
import sys

from _train_support import ROOT, env


def test_bench_train_tiny_runs_the_real_loop():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--tiny",
                        "--presets", "portrait", "low-vram"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert report["tiny"] is True and [x["preset"] for x in report["results"]] == ["portrait", "low-vram"]
    for res in report["results"]:
        assert res["status"] == "finished" and res["steps_timed"] == 2 and res["s_per_step"] > 0
    low = report["results"][1]["settings"]
    assert low["gradient_checkpointing"] and low["optimizer"] == "adamw8bit" and low["cache_latents"]
