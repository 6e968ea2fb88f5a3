"""The run-folder reader: incremental, torn lines, resumed attempts, CLI runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from studio.runs.monitor import RunMonitor, ema, format_duration, measured_seconds_per_step


def write(path, *events, torn: str = ""):
    with open(path, "a") as fh:
        for e in events:
            fh.write(json.dumps({"time": time.time(), **e}) + "\n")
        fh.write(torn)


def step(s, loss, total=10):
    return {"type": "step", "step": s, "total_steps": total, "loss": loss, "lr": 1e-4 * s,
            "epoch": 0, "steps_per_s": 2.0, "eta_s": (total - s) / 2, "mem_gb": 1.5}


def test_incremental_read_keeps_a_torn_line_until_it_is_complete(tmp_path):
    run = tmp_path / "run"
    (run / "samples" / "step-000002").mkdir(parents=True)
    ev = run / "events.jsonl"
    cli = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "studio", "train"])
    write(ev, {"type": "start", "step": 0, "total_steps": 10, "resumed_from": None,
               "pid": cli.pid}, step(1, 1.0), torn='{"type": "step", "step": 2, "tot')
    mon = RunMonitor(run)
    try:
        v = mon.poll()
        assert v.status == "running"  # a CLI training: its start event's pid is alive
    finally:
        cli.kill()
        cli.wait()
    assert [p.step for p in v.loss] == [1] and v.step == 1 and v.total_steps == 10
    with open(ev, "a") as fh:
        fh.write('al_steps": 10, "loss": 0.5, "lr": 0.0002, "steps_per_s": 2.0, "eta_s": 4,'
                 ' "mem_gb": 1.5}\n')
    (run / "samples" / "step-000002" / "0.png").write_bytes(b"png")
    write(ev, {"type": "sample", "step": 2, "prompt": "TOK", "seed": 1,
               "path": "samples/step-000002/0.png"},
          {"type": "checkpoint", "step": 2, "path": "checkpoints/checkpoint-000002"})
    ck = run / "checkpoints" / "checkpoint-000002"
    ck.mkdir(parents=True)
    (ck / "COMPLETE").write_text("")
    v = mon.poll()
    assert [p.step for p in v.loss] == [1, 2] and v.lr == 0.0002 and v.mem_gb == 1.5
    assert v.samples[2][0]["prompt"] == "TOK"
    assert v.checkpoints == [{"step": 2, "path": str(ck), "complete": True, "lora": None}]
    assert v.smoothed[0] == 1.0 and 0.5 < v.smoothed[1] < 1.0
    assert mon.poll().loss == v.loss  # nothing new: same view


def test_a_resumed_attempt_supersedes_steps_after_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ev = run / "events.jsonl"
    write(ev, {"type": "start", "step": 0, "total_steps": 6, "pid": 1},
          *[step(s, 1 / s, 6) for s in range(1, 5)],
          {"type": "end", "status": "cancelled", "step": 4, "message": "stopped"})
    mon = RunMonitor(run)
    assert mon.poll().status == "cancelled"
    write(ev, {"type": "start", "step": 3, "total_steps": 6, "resumed_from":
               "checkpoints/checkpoint-000003", "pid": 1}, step(4, 0.2, 6))
    v = mon.poll()
    assert [p.step for p in v.loss] == [1, 2, 3, 4] and v.loss[-1].loss == 0.2
    assert v.resumed_from.endswith("000003")
    write(ev, step(5, 0.1, 6), step(6, 0.1, 6),
          {"type": "end", "status": "finished", "step": 6, "message": "done"})
    v = mon.poll()
    assert [p.step for p in v.loss] == list(range(1, 7)) and v.status == "finished"
    assert v.eta_s is None and v.progress == 1.0


def test_a_cli_run_without_end_and_a_dead_pid_is_interrupted_with_a_reason(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write(run / "events.jsonl", {"type": "start", "step": 0, "total_steps": 5,
                                 "pid": 2**22 + 12345}, step(1, 1.0, 5),
          {"type": "error", "message": "Loss became NaN at step 2."})
    (run / "train.log").write_text("x" * 40000 + "\nline a\nline b\r line b2\n")
    v = RunMonitor(run).poll()
    assert v.status == "interrupted" and v.error == "Loss became NaN at step 2."
    assert v.log_tail.splitlines()[-2:] == ["line a", " line b2"]


def test_ema_duration_and_measured_speed(tmp_path):
    assert ema([]) == [] and ema([2.0, 2.0]) == [2.0, 2.0]
    assert format_duration(59) == "59 s" and format_duration(125) == "2 min 05 s"
    assert format_duration(None) == "-" and format_duration(7300) == "2 h 01 min"
    runs = tmp_path / "runs"
    assert measured_seconds_per_step(runs) is None
    (runs / "r1").mkdir(parents=True)
    (runs / "r1" / "config.yaml").write_text("data:\n  resolution: 64\ntrain:\n  batch_size: 2\n")
    write(runs / "r1" / "events.jsonl", *[{**step(s, 1.0), "steps_per_s": 4.0} for s in
                                           range(1, 6)])
    assert measured_seconds_per_step(runs, resolution=64) == (0.25, "r1")
    assert measured_seconds_per_step(runs, resolution=64, batch_size=2) == (0.25, "r1")
    assert measured_seconds_per_step(runs, resolution=1024) is None
    assert measured_seconds_per_step(runs, resolution=64, batch_size=1) is None
    assert measured_seconds_per_step(runs, resolution=64, exclude=runs / "r1") is None
    # A run whose config cannot be read still tells the machine's speed.
    (runs / "r1" / "config.yaml").write_text("train:\n  resolution: 64\n")
    assert measured_seconds_per_step(runs, resolution=1024) == (0.25, "r1")
