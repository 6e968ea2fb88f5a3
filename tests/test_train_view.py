"""What the Train tab shows (issue 13, points 7-9): a loss chart with a legend and whole-step
ticks, warnings of a resumed run once, the Resume button (not the CLI flag) in a browser,
buttons disabled until they apply, and no bitsandbytes note about its optional kernels."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import gradio as gr
from _train_support import ROOT

from studio.jobs.service import JobService
from studio.runs.monitor import RunMonitor
from studio.ui.context import AppContext
from studio.ui.train_handlers import TrainHandlers
from studio.ui.train_view import loss_axis, status_markdown


def _tab(ctx):
    from studio.ui import train_tab

    with gr.Blocks():
        return train_tab.build(ctx)


def _events(run, *events):
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "events.jsonl", "a") as fh:
        for e in events:
            fh.write(json.dumps({"time": 1.0, **e}) + "\n")


def _step(s, total=3):
    return {"type": "step", "step": s, "total_steps": total, "loss": 0.5, "lr": 1e-4,
            "epoch": 0, "steps_per_s": 2.0, "eta_s": 1, "mem_gb": 0.0}


BF16 = "train.mixed_precision=bf16 is ignored on a CPU (training in fp32)."


def test_resumed_run_shows_its_warning_once_and_the_resume_button(tmp_path):
    run = tmp_path / "run"
    for start in (0, 2):  # the first attempt, cancelled; then the resume
        _events(run, {"type": "start", "step": start, "total_steps": 3, "resumed_from": None},
                {"type": "log", "level": "warning", "message": BF16}, _step(start + 1))
    _events(run, {"type": "end", "status": "cancelled", "step": 3,
                  "message": "Stopped at step 3 by request; resume with --resume latest."})
    view = RunMonitor(run).poll()
    text = status_markdown(view)
    assert text.count(BF16) == 1
    assert "--resume" not in text and "press Resume" in text


def test_the_loss_chart_has_a_legend_and_whole_step_ticks(workspace, tmp_path):
    c = _tab(AppContext(workspace=workspace, jobs=JobService(workspace)))
    plot = c["plot"]
    assert plot.color == "series" and plot.colors_in_legend == ["raw", "smoothed"]
    assert plot.x_axis_format == "d"
    # Gradio draws the legend below the plot and cuts it off under a block label; the chart's
    # own title replaces the label. Its colours come from the series in the first data.
    assert plot.show_label is False and plot.title == "Loss"
    first = plot.value
    assert first["columns"][2] == "series" and {r[2] for r in first["data"]} == {"raw",
                                                                                "smoothed"}
    assert first["datatypes"] == {"step": "quantitative", "loss": "quantitative",
                                  "series": "nominal"}
    assert plot.x_lim[1] >= 20  # an axis of >= 20 steps is ticked at whole steps
    run = workspace.runs_dir / "r"
    _events(run, {"type": "start", "step": 0, "total_steps": 3, "resumed_from": None},
            _step(1), _step(2))
    out = c["handlers"].tick(str(run), {})
    update = out[3]
    assert update["x_lim"] == loss_axis(RunMonitor(run).poll()) == [0, 30]
    assert set(update["value"]["series"]) == {"raw", "smoothed"}
    assert loss_axis(RunMonitor(run).poll()) == [0, 30]


def test_buttons_are_disabled_until_they_apply(workspace):
    svc = JobService(workspace)
    c = _tab(AppContext(workspace=workspace, jobs=svc))
    for key in ("cancel", "resume", "send", "export", "send_ckpt", "delete"):
        assert c[key].interactive is False, key
    h = c["handlers"]
    names = ["runs", "status", "error", "plot", "samples", "log", "ckpt", "cancel", "resume",
             "send", "delete", "seen"]
    out = dict(zip(names, h.tick(None, {}), strict=True))  # no run at all
    for key in ("cancel", "resume", "send", "delete"):
        assert out[key]["interactive"] is False, key
    run = workspace.runs_dir / "r"
    _events(run, {"type": "start", "step": 0, "total_steps": 3, "resumed_from": None},
            _step(1), {"type": "end", "status": "finished", "step": 3, "message": "done"})
    out = dict(zip(names, h.tick(str(run), {}), strict=True))
    assert out["send"]["interactive"] is False  # finished, but there is no LoRA file
    assert out["delete"]["interactive"] is True and out["cancel"]["interactive"] is False
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    out = dict(zip(names, h.tick(str(run), {}), strict=True))
    assert out["send"]["interactive"] is True


def test_a_checkpoint_choice_enables_export_and_send(workspace):
    from studio.ui.app import build_app

    demo = build_app(AppContext(workspace=workspace))
    export = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) ==
                  "train-export")
    (fn,) = [f for f in demo.fns.values() if any(o._id == export._id for o in f.outputs)]
    assert [u["interactive"] for u in fn.fn("4")] == [True, True]
    assert [u["interactive"] for u in fn.fn(None)] == [False, False]


def test_cancel_message_in_the_browser_says_press_resume(workspace, monkeypatch):
    from types import SimpleNamespace

    svc = JobService(workspace)
    h = TrainHandlers(AppContext(workspace=workspace, jobs=svc), [])
    job = SimpleNamespace(id=1, state="running")
    monkeypatch.setattr(svc, "job_for_run", lambda run: job)
    monkeypatch.setattr(svc, "cancel", lambda job_id: job)
    msg = h.on_cancel("/runs/x")
    assert "press Resume" in msg and "--resume" not in msg


def test_bitsandbytes_optional_kernels_note_is_silenced_and_nothing_else(caplog):
    from studio.models import quiet_libraries

    quiet_libraries()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please "
                    "make sure you already `pip install kernels`",
                    ModuleNotFoundError("No module named 'kernels'"))
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.",
                    RuntimeError("kernel crashed"))
        bnb.error("a real error")
    assert [r.getMessage() for r in caplog.records] == [
        "Failed to load CPU gemm_4bit_forward from kernels-community: kernel crashed.",
        "a real error"]
    # What a training process's log starts with: importing bitsandbytes says nothing.
    r = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); "
                        "from studio.models import quiet_libraries; quiet_libraries(); "
                        "import bitsandbytes"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert "kernels" not in r.stderr, r.stderr
