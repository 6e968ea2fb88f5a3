"""``make bench OUT=results.json``: the generation and training benchmarks, one after the other
(each in its own process, so one's memory does not count in the other's peak), into one JSON file.

    python benchmarks/bench_all.py --out results.json [--tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(args: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=HERE.parent, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout, round(time.perf_counter() - t0, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (self-check)")
    args = ap.parse_args(argv)
    tiny = ["--tiny"] if args.tiny else []
    gen_out, gen_s = _run([str(HERE / "bench_generate.py"), *tiny, "--compile"]
                          if not args.tiny else [str(HERE / "bench_generate.py"), *tiny,
                                                 "--repeats", "1", "--steps", "2"])
    train_out, train_s = _run([str(HERE / "bench_train.py"), *tiny] +
                              (["--presets", "portrait", "low-vram"] if args.tiny else []))
    result = {"generate": [json.loads(line) for line in gen_out.splitlines()
                           if line.startswith("{")],
              "train": json.loads(train_out[train_out.index("{"):]),
              "wall_s": {"generate": gen_s, "train": train_s}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} (generate {gen_s} s, train {train_s} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
