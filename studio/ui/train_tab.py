"""The Train tab: dataset + preset + the six simple settings (+ Advanced) -> background job; live
view of any run; checkpoint comparison; hand-off of the LoRA to the Generate tab; the queue,
deleting runs, saving settings as a preset.

This module is the layout and the event wiring; the handlers are in studio.ui.train_handlers,
the simple mode in studio.ui.train_simple, the config-schema widgets in
studio.ui.config_widgets, the view formatting in studio.ui.train_view, presets in
studio.ui.train_presets, delete and queue in studio.ui.train_manage. Every dropdown that lists
workspace things (datasets, presets, runs, checkpoints, waiting jobs) is read again on page load
and after the actions that change it. Training runs in its own process (started by the job service, whose
scheduler the composition root runs), so a reload or an app restart loses nothing: the live
view polls the run folder every 2 s with ``gr.Timer``.
"""

from __future__ import annotations

import gradio as gr

from studio import config as cfgmod
from studio.ui import train_likeness
from studio.ui.config_widgets import build_config_widgets, preset_note, preset_values
from studio.ui.context import AppContext
from studio.ui.train_handlers import TrainHandlers
from studio.ui.train_manage import ManageHandlers, build_delete, build_queue, wire_manage
from studio.ui.train_presets import PresetHandlers, build_save, wire_presets
from studio.ui.train_simple import SIMPLE_KEYS, build_simple
from studio.ui.train_view import MIN_STEP_AXIS, dataset_choices, loss_frame

TICK_S = 2.0
# Settings the time estimate depends on: a change to one of them updates it.
ESTIMATE_KEYS = {"train.max_train_steps", "data.resolution", "train.batch_size",
                 "train.num_train_epochs"}


def default_preset() -> str | None:
    presets = cfgmod.list_presets()
    return "portrait" if "portrait" in presets else (presets[0] if presets else None)


def _dataset_and_preset(ctx: AppContext, c: dict) -> None:
    gr.Markdown("### 1. Dataset")
    with gr.Row():
        c["dataset"] = gr.Dropdown(choices=dataset_choices(ctx), value=None, scale=4,
                                   label="Prepared dataset", elem_id="train-dataset",
                                   info="A dataset saved in the Dataset tab.")
        c["dataset_refresh"] = gr.Button("↻", size="sm", scale=0, min_width=48,
                                         elem_id="train-dataset-refresh")
    c["dataset_path"] = gr.Textbox(label="…or a dataset folder", elem_id="train-dataset-path",
                                   placeholder="/path/to/DATASET (imagefolder or images with "
                                               ".txt captions)")
    gr.Markdown("### 2. Settings")
    preset = default_preset()
    c["preset"] = gr.Dropdown(cfgmod.list_presets(), value=preset, label="Preset",
                              elem_id="train-preset", allow_custom_value=True,
                              info="A bundled preset, one you saved, or the path of a preset "
                                   "YAML. Picking another keeps the settings you changed.")
    c["note"] = gr.Markdown(preset_note(preset), elem_id="train-preset-note")
    from studio.ui.train_hardware import recommended_panel

    c["hardware"] = recommended_panel()  # "Recommended for this GPU"


def _settings(c: dict) -> None:
    """The simple settings on top, every other one under Advanced: one widget per field,
    filled with the preset's values (kept in a State: the overrides are the widgets that differ
    from them)."""
    values = preset_values(default_preset())
    c["preset_values"] = gr.State(values)
    simple_keys, simple = build_simple(values)
    c["run_name"] = gr.Textbox(label="Run name (optional)", elem_id="train-run-name",
                               placeholder="default: DATASET-PRESET-DATE")
    with gr.Accordion("Advanced settings", open=False, elem_id="train-advanced"):
        gr.Markdown("Every other training setting, by section, with the preset's values filled "
                    "in; only the ones you change are applied on top of the preset.")
        adv_keys, advanced = build_config_widgets(values, skip=SIMPLE_KEYS)
        c["extra"] = gr.Textbox(label="Extra overrides", lines=3, elem_id="train-overrides",
                                placeholder="train.learning_rate=2e-4\ndata.resolution=768",
                                info="One dotted key=value per line, applied last (over the "
                                     "fields above).")
    c["widget_keys"], c["widgets"] = simple_keys + adv_keys, simple + advanced


def _start_column(ctx: AppContext, c: dict, can_train: bool) -> None:
    _dataset_and_preset(ctx, c)
    _settings(c)
    build_save(c)
    c["estimate"] = gr.Markdown(elem_id="train-estimate")
    c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start",
                           interactive=can_train)
    c["start_status"] = gr.Markdown(elem_id="train-start-status")


def _live_column(c: dict) -> None:
    with gr.Row():
        c["runs"] = gr.Dropdown(choices=[], value=None, label="Runs", elem_id="train-runs",
                                scale=4, info="Every run in the workspace, any state.")
        c["refresh"] = gr.Button("↻", size="sm", scale=0, min_width=48, elem_id="train-refresh")
    c["status"] = gr.Markdown(elem_id="train-status")
    c["error"] = gr.Markdown(elem_id="train-error")
    with gr.Row():  # enabled by the live view when they apply to the selected run
        c["cancel"] = gr.Button("Cancel", elem_id="train-cancel", size="sm", interactive=False)
        c["resume"] = gr.Button("Resume", elem_id="train-resume", size="sm", interactive=False)
        c["send"] = gr.Button("Use this LoRA in Generate", elem_id="train-send", size="sm",
                              variant="primary", interactive=False)
    c["action_status"] = gr.Markdown(elem_id="train-action-status")
    c["plot"] = gr.LinePlot(value=loss_frame(), x="step", y="loss",
                            color="series", label="Loss", show_label=False, title="Loss",
                            color_title="", elem_id="train-loss", height=300,
                            color_map={"raw": "#9ecae1", "smoothed": "#08519c"},
                            colors_in_legend=["raw", "smoothed"],
                            x_lim=[0, MIN_STEP_AXIS], x_axis_format="d")
    train_likeness.build(c)
    c["samples"] = gr.Gallery(label="Validation samples (newest first)", columns=4, height=260,
                              elem_id="train-samples", object_fit="contain")
    c["log"] = gr.Textbox(label="Log (tail)", lines=10, max_lines=10, elem_id="train-log",
                          interactive=False, autoscroll=True)
    _compare_section(c)
    build_queue(c)
    build_delete(c)


def _compare_section(c: dict) -> None:
    with gr.Accordion("Compare checkpoints", open=False, elem_id="train-compare"):
        gr.Markdown("Every complete checkpoint with each validation prompt at its fixed seed "
                    "(computed once, cached in the run's compare/ folder).")
        c["compare"] = gr.Button("Compare checkpoints", elem_id="train-compare-button")
        c["grid"] = gr.Gallery(label="Checkpoints × prompts", columns=2, height=400,
                               elem_id="train-compare-grid", object_fit="contain")
        with gr.Row():
            c["ckpt"] = gr.Dropdown(choices=[], label="Checkpoint", elem_id="train-ckpt", scale=2)
            c["export"] = gr.Button("Export as the run's LoRA", elem_id="train-export", size="sm",
                                    interactive=False)
            c["send_ckpt"] = gr.Button("Send checkpoint to Generate", elem_id="train-send-ckpt",
                                       size="sm", interactive=False)
        c["compare_status"] = gr.Markdown(elem_id="train-compare-status")


def _wire_start(h: TrainHandlers, c: dict) -> None:
    widgets = c["widgets"]
    # Opening the tab reads the dataset list again: a dataset saved in the Dataset tab is there.
    # (A second listener on the Dataset tab's Save button would race the save itself.)
    c["tab"].select(h.refresh_datasets, None, c["dataset"], show_progress="hidden")
    c["dataset_refresh"].click(h.refresh_datasets, None, c["dataset"], show_progress="hidden")
    c["preset"].change(h.on_preset, [c["preset"], c["extra"], c["preset_values"], *widgets],
                       [c["preset_values"], c["note"], c["estimate"], *widgets],
                       show_progress="hidden")
    estimate_in = [c["preset"], c["extra"], c["preset_values"], *widgets]
    c["extra"].blur(h.on_estimate, estimate_in, c["estimate"], show_progress="hidden")
    for (key, _), w in zip(c["widget_keys"], widgets, strict=True):
        if key in ESTIMATE_KEYS:
            w.change(h.on_estimate, estimate_in, c["estimate"], show_progress="hidden")
    c["start"].click(h.on_start, [c["dataset"], c["dataset_path"], c["preset"], c["run_name"],
                                  c["extra"], c["preset_values"], *widgets],
                     [c["start_status"], c["runs"], c["estimate"]])


def live_outputs(c: dict) -> list:
    return [c[k] for k in ("runs", "status", "error", "plot", "samples", "log", "ckpt",
                           "cancel", "resume", "send", "delete", "seen")]


def _wire_live(h: TrainHandlers, c: dict) -> None:
    outputs = live_outputs(c)
    c["timer"].tick(h.tick, [c["runs"], c["seen"]], outputs, show_progress="hidden",
                    queue=False)
    c["runs"].change(h.tick, [c["runs"], c["seen"]], outputs, show_progress="hidden")
    c["refresh"].click(h.refresh, [c["runs"], c["seen"]], outputs)
    c["cancel"].click(h.on_cancel, c["runs"], c["action_status"])
    c["resume"].click(h.on_resume, c["runs"], c["action_status"])
    c["compare"].click(h.on_compare, c["runs"], [c["grid"], c["compare_status"], c["ckpt"]],
                       concurrency_limit=1, concurrency_id="gpu")
    c["export"].click(h.on_export, [c["runs"], c["ckpt"]], c["compare_status"])
    c["ckpt"].change(lambda step: [gr.update(interactive=bool(step))] * 2, c["ckpt"],
                     [c["export"], c["send_ckpt"]], show_progress="hidden")


def build(ctx: AppContext) -> dict:
    """The tab's layout and its own events. Returns its components (by name) and, under
    "handlers", the :class:`TrainHandlers` that :func:`wire` uses."""
    from studio.spaces import training_available

    can_train, why_not = training_available()
    c: dict = {}
    with gr.Tab("Train", id="train") as c["tab"]:
        if not can_train:
            gr.Markdown(f"**Training is not available here.** {why_not}",
                        elem_id="train-unavailable")
        with gr.Row():
            with gr.Column(scale=2):
                _start_column(ctx, c, can_train)
            with gr.Column(scale=3):
                _live_column(c)
        c["timer"] = gr.Timer(TICK_S)
        c["seen"] = gr.State({})  # per page: what the client already shows (avoid resending)
    c["handlers"] = h = TrainHandlers(ctx, c["widget_keys"], can_train, why_not)
    c["presets"] = p = PresetHandlers(h)
    c["manage"] = m = ManageHandlers(ctx)
    _wire_start(h, c)
    _wire_live(h, c)
    wire_presets(p, c)
    wire_manage(m, c)
    train_likeness.wire(ctx, c)
    return c


# ---- cross-tab wiring ---------------------------------------------------------------------------
def wire(components: dict[str, dict]) -> None:
    """Every page load reads the workspace lists again (datasets, presets, runs and their
    checkpoints, the queue) and the estimate; the Dataset tab's "Train on this dataset" opens
    this tab with that dataset picked (and a saved dataset is listed at once); "Use this LoRA in
    Generate" fills the Generate tab (LoRA + the prompt that names the subject) and switches
    to it."""
    mine = components.get("train") or {}
    if not mine:
        return
    h: TrainHandlers = mine["handlers"]
    tabs = components.get("tabs")
    app = components.get("app")
    if app is not None:  # every page load (a browser refresh, a restarted app)
        app.load(h.refresh_datasets, None, mine["dataset"], show_progress="hidden")
        app.load(mine["presets"].refresh, None, mine["preset"], show_progress="hidden")
        app.load(h.refresh, [mine["runs"], mine["seen"]], live_outputs(mine),
                 show_progress="hidden")
        app.load(mine["manage"].queue, None, [mine["queue"], mine["waiting"],
                                              mine["queue_seen"]], show_progress="hidden")
        app.load(h.on_estimate, [mine["preset"], mine["extra"], mine["preset_values"],
                                 *mine["widgets"]], mine["estimate"], show_progress="hidden")
    ds = components.get("dataset") or {}
    if ds.get("saved_name") is not None:  # a dataset saved in the Dataset tab is listed at once
        ds["saved_name"].change(h.refresh_datasets, None, mine["dataset"],
                                show_progress="hidden")
    if ds.get("to_train") is not None and ds.get("saved_name") is not None and tabs is not None:
        ds["to_train"].click(h.select_dataset, ds["saved_name"], [mine["dataset"], tabs])
    gen = components.get("generate") or {}
    if not gen.get("prompt") or not gen.get("lora") or tabs is None:
        return
    mine["send"].click(h.send_final, mine["runs"],
                       [gen["prompt"], gen["lora"], tabs, mine["action_status"]])
    mine["send_ckpt"].click(h.to_generate, [mine["runs"], mine["ckpt"]],
                            [gen["prompt"], gen["lora"], tabs, mine["compare_status"]])
