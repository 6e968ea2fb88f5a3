"""Every Train-tab dropdown that lists workspace things (datasets, presets, runs, checkpoints,
waiting jobs) is read again on page load, and after the actions that change it; the Dataset
tab's "Train on this dataset" opens Train with that dataset picked (issue 13, point 1)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
from _train_support import make_dataset

from studio.ui.context import AppContext


def _app(ctx, extra_tab=None):
    """The real app; ``extra_tab`` stands in for the Dataset tab's hand-off components."""
    from studio.ui import app as appmod

    if extra_tab is None:
        return appmod.build_app(ctx)
    real = appmod.TAB_MODULES
    try:
        appmod.TAB_MODULES = [extra_tab if m.__name__.endswith("dataset_tab") else m
                              for m in real]
        return appmod.build_app(ctx)
    finally:
        appmod.TAB_MODULES = real


def _listeners(demo, elem_id):
    """{event: [fn, ...]} of the listeners that write the component ``elem_id``."""
    comp = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    out: dict[str, list] = {}
    for fn in demo.fns.values():
        if any(o._id == comp._id for o in fn.outputs):
            for _, event in fn.targets:
                out.setdefault(event, []).append(fn)
    return out


def _call(fn, **by_elem):
    """Call a listener with None for each input (or the value given by elem_id)."""
    args = [by_elem.get(getattr(i, "elem_id", None)) for i in fn.inputs]
    return fn.fn(*args)


def _output(fn, result, elem_id):
    outs = [getattr(o, "elem_id", None) for o in fn.outputs]
    return result if len(outs) == 1 else result[outs.index(elem_id)]


def _run(ws, name, steps=(2, 4)):
    """A finished run folder with complete checkpoints (as the trainer leaves it)."""
    from studio.config import load_config
    from studio.runs.folder import RunFolder

    run = RunFolder(ws.runs_dir / name)
    run.path.mkdir(parents=True)
    run.save_config(load_config(overrides=["data.resolution=64"]))
    for s in steps:
        ck = run.checkpoints_dir / f"checkpoint-{s:06d}"
        ck.mkdir(parents=True)
        (ck / run.LORA).write_bytes(b"x")
        (ck / "COMPLETE").write_text("")
    run.events_path.write_text(json.dumps({"type": "end", "time": 1, "status": "finished",
                                           "step": 4, "message": "done"}) + "\n")
    ws.register_run(name, run.path)
    return run


def test_every_workspace_list_is_read_again_on_page_load(workspace, home):
    ctx = AppContext(workspace=workspace)
    demo = _app(ctx)
    # Made after the app was built: only a reload can show them.
    ds = make_dataset(workspace.datasets_dir / "later")
    (home / "presets").mkdir()
    (home / "presets" / "saved-one.yaml").write_text("# mine\ntrain:\n  max_train_steps: 9\n")
    run = _run(workspace, "r1")

    (load,) = _listeners(demo, "train-dataset")["load"]
    assert ("later (4 images)", str(ds)) in _call(load)["choices"]
    (load,) = _listeners(demo, "train-preset")["load"]
    assert "saved-one" in _call(load)["choices"] and "portrait" in _call(load)["choices"]
    (load,) = _listeners(demo, "train-runs")["load"]
    out = _call(load)
    runs = _output(load, out, "train-runs")
    assert [v for _, v in runs["choices"]] == [str(run.path)] and runs["value"] == str(run.path)
    ckpt = _output(load, out, "train-ckpt")
    assert ckpt["choices"] == ["2", "4"] and ckpt["value"] == "4"
    (load,) = _listeners(demo, "train-queue-waiting")["load"]
    assert _output(load, _call(load), "train-queue-waiting")["choices"] == []


def test_lists_are_read_again_after_the_actions_that_change_them(workspace):
    ctx = AppContext(workspace=workspace)
    demo = _app(ctx)
    ds = make_dataset(workspace.datasets_dir / "later")
    events = _listeners(demo, "train-dataset")
    assert {"load", "select", "click"} <= set(events)  # page load, opening the tab, ↻
    for fn in events["select"] + events["click"]:  # a click may also switch tabs: (list, tabs)
        out = _call(fn)
        out = out[0] if isinstance(out, tuple) else out
        assert ("later (4 images)", str(ds)) in out["choices"]
    # Runs: Start, Delete, ↻ and the live timer; presets: Save; waiting jobs: the timer, cancel.
    assert {"click", "tick", "change", "load"} <= set(_listeners(demo, "train-runs"))
    assert {"click", "load"} <= set(_listeners(demo, "train-preset"))
    assert {"tick", "click", "load"} <= set(_listeners(demo, "train-queue-waiting"))
    assert {"tick", "change", "click", "load"} <= set(_listeners(demo, "train-ckpt"))


def _fake_dataset_build(ctx):
    """The two components the Dataset tab hands over: its "Train on this dataset" button and
    the saved dataset's name."""
    with gr.Tab("Dataset", id="dataset"):
        name = gr.Textbox(elem_id="fake-saved-name")
        button = gr.Button("Train on this dataset", elem_id="fake-to-train")
    return {"to_train": button, "saved_name": name}


FakeDatasetTab = SimpleNamespace(__name__="studio.ui.dataset_tab", build=_fake_dataset_build)


def test_train_on_this_dataset_opens_train_with_it_picked(workspace):
    ctx = AppContext(workspace=workspace)
    demo = _app(ctx, FakeDatasetTab)
    ds = make_dataset(workspace.datasets_dir / "mine")
    by_event = _listeners(demo, "train-dataset")
    (click,) = [fn for fn in by_event["click"]
                if any(getattr(demo.blocks.get(t), "elem_id", None) == "fake-to-train"
                       for t, _ in fn.targets)]
    dropdown, tabs = _call(click, **{"fake-saved-name": "mine"})
    assert dropdown["value"] == str(ds) and ("mine (4 images)", str(ds)) in dropdown["choices"]
    assert tabs.selected == "train"
    assert _call(click, **{"fake-saved-name": str(ds)})[0]["value"] == str(ds)  # a folder too
    # Saving in the Dataset tab changes the name: the list is read again at once.
    (change,) = by_event["change"]
    assert ("mine (4 images)", str(ds)) in _call(change)["choices"]


def test_select_dataset_handler(workspace):
    from studio.ui.train_handlers import TrainHandlers

    h = TrainHandlers(AppContext(workspace=workspace), [])
    ds = make_dataset(workspace.datasets_dir / "me")
    assert h.select_dataset("me")[0]["value"] == str(ds)
    assert h.select_dataset("nosuch")[0]["value"] is None
    assert h.select_dataset(None)[1].selected == "train"
