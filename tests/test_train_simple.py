"""The Train tab's settings without a browser (issue 13): the simple mode on top with one widget
per field, Advanced labels that name their section, a preset change that keeps the user's
changes, and a time estimate from the speed this machine measured with the steps and resolution
actually set."""

from __future__ import annotations

import json
import re

import gradio as gr
import pytest

from studio.config import TrainConfig
from studio.ui.config_widgets import config_fields, preset_values, widget_value
from studio.ui.context import AppContext
from studio.ui.train_simple import SIMPLE_KEYS


def _tab(ctx):
    from studio.ui import train_tab

    with gr.Blocks() as demo:
        c = train_tab.build(ctx)
    return demo, c


def _values(c, preset="portrait", **changed):
    pv = preset_values(preset)
    vals = [widget_value(kind, pv.get(k)) for k, kind in c["widget_keys"]]
    keys = [k for k, _ in c["widget_keys"]]
    for key, value in changed.items():
        vals[keys.index(key.replace("__", "."))] = value
    return pv, vals


def test_simple_mode_on_top_and_one_widget_per_field(workspace):
    demo, c = _tab(AppContext(workspace=workspace))
    keys = [k for k, _ in c["widget_keys"]]
    assert keys[:6] == ["train.max_train_steps", "data.resolution", "train.learning_rate",
                        "lora.rank", "checkpoints.every_n_steps", "validation.every_n_steps"]
    every = {k for _, items in config_fields(TrainConfig) for k, _ in items}
    assert sorted(keys) == sorted(every) and len(keys) == len(set(keys))  # one source of truth
    labels = [w.label for w in c["widgets"]]
    assert len(labels) == len(set(labels))  # no two fields called the same
    simple = dict(zip(keys[:6], c["widgets"][:6], strict=True))
    assert simple["train.max_train_steps"].label == "Training steps"
    assert "Typical" in simple["train.max_train_steps"].info
    assert simple["checkpoints.every_n_steps"].label != simple["validation.every_n_steps"].label
    advanced = dict(zip(keys[6:], labels[6:], strict=True))
    assert advanced["checkpoints.total_limit"] == "Checkpoints: total limit"
    assert advanced["validation.steps"] == "Validation: steps"
    assert not SIMPLE_KEYS & set(advanced)
    sections = [b.label for b in demo.blocks.values()
                if isinstance(b, gr.Accordion) and str(b.elem_id).startswith("train-section-")]
    assert {"Training", "Checkpoints", "Validation", "LoRA", "Data"} <= set(sections)


def test_a_preset_change_keeps_the_fields_the_user_changed(workspace):
    _, c = _tab(AppContext(workspace=workspace))
    h = c["handlers"]
    pv, vals = _values(c, train__max_train_steps=45, data__resolution=64,
                       validation__steps=3)
    out = h.on_preset("style", "", pv, *vals)
    new_pv, note, estimate, *updates = out
    keys = [k for k, _ in c["widget_keys"]]
    by_key = dict(zip(keys, updates, strict=True))
    for kept in ("train.max_train_steps", "data.resolution", "validation.steps"):
        assert by_key[kept] is gr.skip() or by_key[kept] == gr.skip(), kept
    assert by_key["lora.rank"]["value"] == 32  # not changed by the user: the new preset's value
    assert by_key["train.lr_scheduler"]["value"] == "cosine"
    assert "Kept your changes" in note and "Training steps (45)" in note
    assert "Resolution (px) (64)" in note and "Validation: steps (3)" in note
    assert new_pv["train.max_train_steps"] == 1000
    assert estimate.startswith("**45 steps** at 64 px")
    # The kept values now differ from the preset: they are overrides of the run.
    assert "train.max_train_steps=45" in h.overrides(new_pv, "", vals)
    # A preset that does not load (a typed name) says why and changes no field.
    out = h.on_preset("no-such-preset", "", pv, *vals)
    assert out[1].startswith("⚠️ Unknown preset 'no-such-preset'") and out[0] == gr.skip()
    assert all(u == gr.skip() for u in out[3:])
    # Nothing changed: nothing kept, no note.
    pv, vals = _values(c)
    out = h.on_preset("style", "", pv, *vals)
    assert "Kept" not in out[1] and all(u is not gr.skip() for u in out[3:])


def test_the_estimate_follows_the_simple_fields_and_extra_lines(workspace):
    _, c = _tab(AppContext(workspace=workspace))
    pv, vals = _values(c, train__max_train_steps=60, data__resolution=64)
    est = c["handlers"].on_estimate("portrait", "", pv, *vals)
    assert est.startswith("**60 steps** at 64 px")
    est = c["handlers"].on_estimate("portrait", "train.max_train_steps=7", pv, *vals)
    assert est.startswith("**7 steps** at 64 px")


def test_editing_steps_or_resolution_updates_the_estimate(workspace):
    from studio.ui.app import build_app

    demo = build_app(AppContext(workspace=workspace))
    estimate = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) ==
                    "train-estimate")
    triggers = {getattr(demo.blocks.get(bid), "elem_id", None): ev
                for fn in demo.fns.values() if any(o._id == estimate._id for o in fn.outputs)
                for bid, ev in fn.targets}
    for eid in ("train-cfg-train-max-train-steps", "train-cfg-data-resolution",
                "train-cfg-train-batch-size"):
        assert triggers.get(eid) == "change", (eid, triggers)
    assert None in triggers or "load" in triggers.values()  # the page load fills it in


def _seconds(text: str) -> float:
    m = re.search(r"about \*\*(?:(\d+) h )?(?:(\d+) min )?(?:(\d+) s)?\*\*", text)
    assert m, text
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def test_after_a_tiny_run_the_estimate_is_within_half_of_the_measured_time(workspace,
                                                                           tiny_models):
    from _train_support import fast_overrides, make_dataset

    from studio.config import load_config
    from studio.runs.speed import machine_speed
    from studio.train.loop import train

    steps = 10
    ds = make_dataset(workspace.datasets_dir / "me")
    run = workspace.runs_dir / "first"
    assert train(load_config(overrides=fast_overrides(run, ds, tiny_models["base"], steps=steps)
                             )).status == "finished"
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    start = next(e["time"] for e in events if e["type"] == "start")
    last = [e["time"] for e in events if e["type"] == "step"][-1]
    measured = last - start  # the training loop's time for these steps

    _, c = _tab(AppContext(workspace=workspace))
    pv, vals = _values(c, train__max_train_steps=steps, data__resolution=64, lora__rank=4)
    est = c["handlers"].on_estimate("portrait", "", pv, *vals)
    assert "measured by run first" in est, est
    speed = machine_speed(workspace.runs_dir, 64, 1)
    assert abs(speed.seconds_per_step * steps - measured) <= 0.5 * measured, (speed, measured)
    if measured >= 4:  # the shown duration has whole seconds
        assert abs(_seconds(est) - measured) <= 0.5 * measured, (est, measured)
    # Another resolution: the same speed scaled by the pixels (4x at twice the size).
    pv, vals = _values(c, train__max_train_steps=steps, data__resolution=128)
    est = c["handlers"].on_estimate("portrait", "", pv, *vals)
    assert "scaled by pixels from run first at 64 px" in est, est
    assert machine_speed(workspace.runs_dir, 128, 1).seconds_per_step == \
        pytest.approx(4 * speed.seconds_per_step)
