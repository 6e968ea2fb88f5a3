"""The benchmark scripts run (tiny mode on CPU) and print their JSON results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_generate_tiny_runs():
    res = subprocess.run([sys.executable, "benchmarks/bench_generate.py", "--tiny", "--repeats", "1",
                          "--steps", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [(r["mode"], r["refiner"]) for r in rows] == [
        ("defaults", False), ("speed-off", False), ("speed", False), ("speed", True)]
    assert all(r["s_per_image_median"] > 0 and r["ratio_to_plain"] > 0 for r in rows)
    assert rows[2]["memory_plan"]["fused_qkv"] and not rows[1]["memory_plan"]["fused_qkv"]


def test_bench_identity_runs():
    res = subprocess.run([sys.executable, "benchmarks/bench_identity.py", "--repeats", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["embed_1024_s"] > 0 and row["embed_crop_s"] > 0
    for label, n in (("one_person", 4), ("mixed", 6)):
        assert row[label]["photos"] == n and row[label]["dataset_added_s_per_photo"] > 0
