"""A process that follows the trainer's run-folder contract without any model (runner tests).

It is the trainer's *interface* (arguments, events, checkpoints with COMPLETE markers, exit code
3 after SIGTERM, an error event + stderr line on failure) with a sleep instead of a training
step, so the runner's process handling is tested fast and exactly. The real trainer is driven by
the browser acceptance test.

    python tests/runner_fake_trainer.py [--step-sleep S] [--exit-sleep S]
        --config RUN/config.yaml --dataset DIR --out RUN [--resume latest]

From RUN/config.yaml (a TrainConfig, as the job service writes it) it takes the number of steps
(train.max_train_steps) and the checkpoint interval (checkpoints.every_n_steps). --step-sleep
is the time a step takes (0.05 s), --exit-sleep the time spent exiting after the end event.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml


def emit(run: Path, **ev) -> None:
    ev.setdefault("time", time.time())
    with open(run / "events.jsonl", "a") as fh:
        fh.write(json.dumps(ev) + "\n")
        fh.flush()


def save_ckpt(run: Path, step: int) -> None:
    d = run / "checkpoints" / f"checkpoint-{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "pytorch_lora_weights.safetensors").write_bytes(b"fake")
    (d / "state.json").write_text(json.dumps({"step": step}))
    (d / "COMPLETE").write_text("ok")
    emit(run, type="checkpoint", step=step, path=f"checkpoints/checkpoint-{step:06d}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume")
    ap.add_argument("--step-sleep", type=float, default=0.05)
    ap.add_argument("--exit-sleep", type=float, default=0.0)
    a = ap.parse_args()
    run = Path(a.out)
    cfg = yaml.safe_load(Path(a.config).read_text())
    steps, every = int(cfg["train"]["max_train_steps"]), int(cfg["checkpoints"]["every_n_steps"])
    sleep = a.step_sleep
    print(f"fake trainer pid {os.getpid()} starting", flush=True)
    if not Path(a.dataset).is_dir():
        msg = f"The dataset folder {a.dataset} does not exist."
        emit(run, type="error", message=msg)
        emit(run, type="end", status="failed", step=0, message=msg)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return 2
    start, resumed = 0, None
    if a.resume:
        ck = sorted((run / "checkpoints").glob("checkpoint-*/COMPLETE"))
        if not ck:
            print("error: no checkpoint to resume from", file=sys.stderr)
            return 2
        start = int(ck[-1].parent.name.split("-")[1])
        resumed = f"checkpoints/{ck[-1].parent.name}"
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
    emit(run, type="start", step=start, total_steps=steps, resumed_from=resumed, pid=os.getpid())
    step = start
    while step < steps:
        if stop["flag"]:
            save_ckpt(run, step)
            emit(run, type="end", status="cancelled", step=step, message="stopped")
            print("stopped by signal; checkpoint saved", flush=True)
            return 3
        time.sleep(sleep)
        step += 1
        emit(run, type="step", step=step, total_steps=steps, loss=1.0 / step, lr=1e-4,
             epoch=0, steps_per_s=1 / sleep, eta_s=(steps - step) * sleep, mem_gb=0.0)
        if step % every == 0:
            save_ckpt(run, step)
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"fake")
    emit(run, type="end", status="finished", step=step, message="done")
    # Like CPython's shutdown (which puts the default signal handlers back), a process that
    # has ended its run can still be killed by a late SIGTERM while it exits.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(a.exit_sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
