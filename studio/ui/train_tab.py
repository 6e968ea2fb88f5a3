"""The Train tab: dataset + preset (+ advanced settings) -> background job; live view of any run;
checkpoint comparison; hand-off of the LoRA to the Generate tab.

All work happens in the core (studio.jobs.runner / monitor / compare); this module maps widgets
to those calls. Training runs in its own process, so a reload or an app restart loses nothing:
the live view polls the run folder every 2 s with ``gr.Timer``.
"""

from __future__ import annotations

import json
import logging
import typing
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import yaml

from studio import config as cfgmod
from studio.jobs.runner import JobError, Runner, get_runner
from studio.runs.monitor import (
    RunView,
    format_duration,
    get_monitor,
    measured_seconds_per_step,
)
from studio.ui.context import AppContext
from studio.workspace import WorkspaceError, safe_join

log = logging.getLogger(__name__)

TICK_S = 2.0
STATE_ICONS = {"queued": "⏳", "running": "🏃", "finished": "✅", "failed": "❌",
               "cancelled": "⏹️", "interrupted": "⚠️", "unknown": "❔"}
# Config fields the tab fills itself (the dataset picker, the run folder).
SKIP_FIELDS = {"output_dir", "data.dataset"}


# ---- config <-> widgets ---------------------------------------------------------------------
def config_fields(model_cls) -> list[tuple[str, list[tuple[str, Any]]]]:
    """[(section, [(dotted key, FieldInfo), ...]), ...] for a TrainConfig-like pydantic model:
    nested models become sections, top-level scalars go to a "general" section."""
    from pydantic import BaseModel

    general: list[tuple[str, Any]] = []
    sections: list[tuple[str, list[tuple[str, Any]]]] = []
    for name, info in model_cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            items = [(f"{name}.{k}", fi) for k, fi in ann.model_fields.items()
                     if f"{name}.{k}" not in SKIP_FIELDS]
            sections.append((name, items))
        elif name not in SKIP_FIELDS:
            general.append((name, info))
    return ([("general", general)] if general else []) + sections


def _kind(ann: Any) -> tuple[str, Any]:
    """Widget kind for a field annotation: bool | int | float | choice | list | text |
    text_opt (optional: empty means None; numbers are parsed)."""
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    optional = type(None) in typing.get_args(ann)
    if ann is bool:
        return "bool", None
    if typing.get_origin(ann) is typing.Literal:
        return "choice", list(typing.get_args(ann))
    if ann is int:
        return "int", None
    if ann is float:
        return "float", None
    if typing.get_origin(ann) is list or (optional and args and typing.get_origin(args[0])
                                         is list):
        return "list", None
    return ("text_opt" if optional else "text"), None


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def widget_value(kind: str, value: Any) -> Any:
    if kind in ("bool", "int", "float", "choice"):
        return value
    if kind == "list":
        return "\n".join(str(v) for v in (value or []))
    return "" if value is None else str(value)


def parse_widget(kind: str, raw: Any) -> Any:
    """Widget value -> config value (empty text -> None; list: one item per line)."""
    if kind == "bool":
        return bool(raw)
    if kind == "int":
        return int(raw) if raw is not None else None
    if kind == "float":
        return float(raw) if raw is not None else None
    if kind == "choice":
        return raw
    if kind == "list":
        return [ln.strip() for ln in str(raw or "").splitlines() if ln.strip()]
    text = str(raw or "").strip()
    if kind == "text":
        return text
    if not text:
        return None
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, int | float | bool) and not isinstance(v, str) else text


def overrides_from_widgets(keys: list[tuple[str, str]], values: list[Any],
                           preset_values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for the widgets whose value differs from the preset's."""
    out = []
    for (key, kind), raw in zip(keys, values, strict=True):
        val = parse_widget(kind, raw)
        if val != preset_values.get(key):
            out.append(f"{key}={json.dumps(val)}")  # JSON is valid YAML: types survive
    return out


def preset_values(preset: str | None) -> dict[str, Any]:
    try:
        return flatten(cfgmod.load_config(preset=preset or None).model_dump(mode="json"))
    except ValueError:
        return {}


def preset_note(preset: str | None) -> str:
    """The comment block at the top of a preset file (what it is for)."""
    if not preset:
        return ""
    try:
        text = cfgmod.preset_path(preset).read_text(encoding="utf-8")
    except (ValueError, OSError):
        return ""
    lines = []
    for ln in text.splitlines():
        if not ln.startswith("#"):
            break
        lines.append(ln.lstrip("# ").rstrip())
    return " ".join(lines)


# ---- pure view helpers (tested without a browser) --------------------------------------------
def dataset_choices(ctx: AppContext) -> list[tuple[str, str]]:
    out = []
    for d in ctx.workspace.list_datasets():
        info = d.get("info") or {}
        count = info.get("count")
        label = d["name"] + (f" ({count} images)" if count else "")
        out.append((label, d["path"]))
    return out


def run_choices(ctx: AppContext, runner: Runner) -> list[tuple[str, str]]:
    jobs = {j.run_dir: j for j in reversed(runner.list())}
    out = []
    for r in ctx.workspace.list_runs():
        path = str(Path(r["path"]).resolve())
        job = jobs.get(path)
        if job is not None:
            state = job.state
        else:
            state = get_monitor(path).poll(log_lines=0).status
        out.append((f"{STATE_ICONS.get(state, '')} {r['name']} ({state})", path))
    return out


def loss_frame(view: RunView) -> pd.DataFrame:
    rows = [{"step": p.step, "loss": p.loss, "series": "raw"} for p in view.loss]
    rows += [{"step": p.step, "loss": s, "series": "smoothed"}
             for p, s in zip(view.loss, view.smoothed, strict=True)]
    return pd.DataFrame(rows, columns=["step", "loss", "series"])


def status_markdown(view: RunView, queue_pos: int | None = None) -> str:
    icon = STATE_ICONS.get(view.status, "")
    total = view.total_steps or "?"
    parts = [f"{icon} **{view.status}**", f"step **{view.step} / {total}**"]
    if view.steps_per_s:
        parts.append(f"{view.steps_per_s:.2f} it/s")
    if view.eta_s is not None and view.status == "running":
        parts.append(f"ETA {format_duration(view.eta_s)}")
    if view.lr is not None:
        parts.append(f"lr {view.lr:.2e}")
    if view.mem_gb is not None:
        parts.append(f"GPU memory {view.mem_gb:.1f} GB")
    if queue_pos:
        parts.append(f"position {queue_pos} in the queue")
    ck = [c["step"] for c in view.checkpoints if c["complete"]]
    lines = [" · ".join(parts),
             f"checkpoints: {', '.join(map(str, ck)) if ck else 'none yet'}"]
    if view.message and view.status in ("queued", "finished", "cancelled"):
        lines.append(str(view.message))
    if view.status == "cancelled":
        lines.append("Resume continues from the last checkpoint.")
    for w in view.warnings[-2:]:
        lines.append(f"⚠️ {w}")
    return "\n\n".join(lines)


def samples_value(view: RunView) -> list[tuple[str, str]]:
    out = []
    for step in sorted(view.samples, reverse=True):  # newest first
        for s in view.samples[step]:
            p = view.run_dir / str(s["path"])
            if p.is_file():
                out.append((str(p), f"step {step} · seed {s.get('seed')} · "
                                    f"{str(s.get('prompt', ''))[:60]}"))
    return out


def trigger_prompt(run_dir: str | Path) -> str:
    """A prompt with the run's trigger: from its manifest, else its dataset's dataset.json."""
    run_dir = Path(run_dir)
    trigger, cls = None, None
    for p in (run_dir / "manifest.json",):
        try:
            m = json.loads(p.read_text())
            trigger, cls = m.get("trigger"), m.get("class_word")
        except (OSError, ValueError):
            pass
    if not trigger:
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            ds = Path(str((cfg.get("data") or {}).get("dataset") or ""))
            info = json.loads((ds / "dataset.json").read_text())
            trigger, cls = info.get("trigger"), cls or info.get("class_word")
        except (OSError, ValueError, TypeError):
            pass
    if trigger and cls and cls not in str(trigger):
        return f"a photo of {trigger} {cls}"
    return f"a photo of {trigger}" if trigger else "a photo of TOK person"


def estimate_markdown(ctx: AppContext, preset: str | None, overrides: list[str]) -> str:
    try:
        cfg = cfgmod.load_config(preset=preset or None, overrides=overrides)
    except ValueError as exc:
        return f"⚠️ {exc}"
    steps = cfg.train.max_train_steps
    if not steps:
        return "Estimated time: unknown (the length is set in epochs)."
    measured = measured_seconds_per_step(ctx.workspace.runs_dir, cfg.data.resolution,
                                         cfg.train.batch_size)
    if measured is None:
        return (f"**{steps} steps** at {cfg.data.resolution} px. Estimated time: unknown until "
                "a first run on this machine has measured its speed.")
    sps, run = measured
    return (f"**{steps} steps** at {cfg.data.resolution} px: about "
            f"**{format_duration(steps * sps)}** of training ({sps:.2f} s/step measured by run "
            f"{run}; validation images and model loading come on top).")


# ---- the tab -----------------------------------------------------------------------------------
def build(ctx: AppContext) -> dict:
    runner = get_runner(ctx.workspace, env=ctx.environment(), base=ctx.base)
    runner.start_scheduler()
    presets = cfgmod.list_presets()
    default_preset = "portrait" if "portrait" in presets else (presets[0] if presets else None)
    widget_keys: list[tuple[str, str]] = []
    widgets: list[gr.components.Component] = []

    from studio.spaces import training_available

    can_train, why_not = training_available()
    with gr.Tab("Train", id="train"):
        if not can_train:
            gr.Markdown(f"**Training is not available here.** {why_not}", elem_id="train-unavailable")
        with gr.Row():
            with gr.Column(scale=2):
                gr.Markdown("### 1. Dataset")
                dataset = gr.Dropdown(choices=dataset_choices(ctx), value=None,
                                      label="Prepared dataset", elem_id="train-dataset",
                                      info="From the Dataset step.")
                dataset_path = gr.Textbox(label="…or a dataset folder", elem_id="train-dataset-path",
                                          placeholder="/path/to/DATASET (imagefolder or images "
                                                      "with .txt captions)")
                gr.Markdown("### 2. Preset")
                preset = gr.Dropdown(presets, value=default_preset, label="Preset",
                                     elem_id="train-preset", allow_custom_value=True,
                                     info="A bundled preset or the path of a preset YAML.")
                note = gr.Markdown(preset_note(default_preset), elem_id="train-preset-note")
                run_name = gr.Textbox(label="Run name (optional)", elem_id="train-run-name",
                                      placeholder="default: DATASET-PRESET-DATE")
                with gr.Accordion("Advanced settings", open=False, elem_id="train-advanced"):
                    gr.Markdown("Every training setting, with the preset's values filled in; "
                                "only the ones you change are applied on top of the preset.")
                    values = preset_values(default_preset)
                    for section, items in config_fields(cfgmod.TrainConfig):
                        with gr.Accordion(section, open=False):
                            for key, info in items:
                                kind, extra = _kind(info.annotation)
                                widgets.append(_make_widget(key, kind, extra, info,
                                                            values.get(key)))
                                widget_keys.append((key, kind))
                    extra_overrides = gr.Textbox(
                        label="Extra overrides", lines=3, elem_id="train-overrides",
                        placeholder="train.learning_rate=2e-4\ndata.resolution=768",
                        info="One dotted key=value per line, applied last.")
                estimate = gr.Markdown(elem_id="train-estimate")
                start = gr.Button("Start training", variant="primary", elem_id="train-start",
                                  interactive=can_train)
                start_status = gr.Markdown(elem_id="train-start-status")
            with gr.Column(scale=3):
                with gr.Row():
                    runs = gr.Dropdown(choices=[], value=None, label="Runs",
                                       elem_id="train-runs", scale=4,
                                       info="Every run in the workspace, any state.")
                    refresh = gr.Button("↻", size="sm", scale=0, elem_id="train-refresh")
                status = gr.Markdown(elem_id="train-status")
                error = gr.Markdown(elem_id="train-error")
                with gr.Row():
                    cancel = gr.Button("Cancel", elem_id="train-cancel", size="sm")
                    resume = gr.Button("Resume", elem_id="train-resume", size="sm")
                    send = gr.Button("Use this LoRA in Generate", elem_id="train-send",
                                     size="sm", variant="primary")
                action_status = gr.Markdown(elem_id="train-action-status")
                plot = gr.LinePlot(value=pd.DataFrame(columns=["step", "loss", "series"]),
                                   x="step", y="loss", color="series", label="Loss",
                                   elem_id="train-loss", height=260,
                                   color_map={"raw": "#9ecae1", "smoothed": "#08519c"})
                samples = gr.Gallery(label="Validation samples (newest first)", columns=4,
                                     height=260, elem_id="train-samples", object_fit="contain")
                logbox = gr.Textbox(label="Log (tail)", lines=10, max_lines=10,
                                    elem_id="train-log", interactive=False, autoscroll=True)
                with gr.Accordion("Compare checkpoints", open=False, elem_id="train-compare"):
                    gr.Markdown("Every complete checkpoint with each validation prompt at its "
                                "fixed seed (computed once, cached in the run's compare/ folder).")
                    compare = gr.Button("Compare checkpoints", elem_id="train-compare-button")
                    grid = gr.Gallery(label="Checkpoints × prompts", columns=2, height=400,
                                      elem_id="train-compare-grid", object_fit="contain")
                    with gr.Row():
                        ckpt = gr.Dropdown(choices=[], label="Checkpoint",
                                           elem_id="train-ckpt", scale=2)
                        export = gr.Button("Export as the run's LoRA", elem_id="train-export",
                                           size="sm")
                        send_ckpt = gr.Button("Send checkpoint to Generate",
                                              elem_id="train-send-ckpt", size="sm")
                    compare_status = gr.Markdown(elem_id="train-compare-status")
        timer = gr.Timer(TICK_S)
        seen = gr.State({})  # per page: what the client already shows (avoid resending)

    # ---- handlers ----------------------------------------------------------------------------
    def gather(preset_name, extra, wvals) -> list[str]:
        pv = preset_values(preset_name)
        ovr = overrides_from_widgets(widget_keys, list(wvals), pv) if widget_keys else []
        ovr += [ln.strip() for ln in str(extra or "").splitlines() if ln.strip()]
        return ovr

    def on_preset(preset_name, extra, *wvals):
        pv = preset_values(preset_name)
        updates = [gr.update(value=widget_value(kind, pv.get(key))) for key, kind in widget_keys]
        est = estimate_markdown(ctx, preset_name, [ln.strip() for ln in
                                                   str(extra or "").splitlines() if ln.strip()])
        return [preset_note(preset_name), est, *updates]

    preset.change(on_preset, [preset, extra_overrides, *widgets],
                  [note, estimate, *widgets], show_progress="hidden")

    def on_estimate(preset_name, extra, *wvals):
        try:
            return estimate_markdown(ctx, preset_name, gather(preset_name, extra, wvals))
        except (ValueError, TypeError) as exc:
            return f"⚠️ {exc}"

    extra_overrides.blur(on_estimate, [preset, extra_overrides, *widgets], estimate,
                         show_progress="hidden")

    def on_start(ds_choice, ds_path, preset_name, name, extra, *wvals):
        folder = (ds_path or "").strip() or (ds_choice or "")
        if not can_train:
            return f"**Training is not available here.** {why_not}", gr.skip(), gr.skip()
        if ctx.remote and (ds_path or "").strip():
            # Served beyond localhost: users pick workspace datasets, never server folders.
            try:
                folder = str(safe_join(ctx.workspace.datasets_dir,
                                       *Path(ds_path.strip()).parts[-1:]))
            except WorkspaceError as exc:
                return f"**Error:** {exc}", gr.skip(), gr.skip()
        try:
            ovr = gather(preset_name, extra, wvals)
            job = runner.submit(folder, preset=preset_name or None, overrides=ovr,
                                run_name=(name or "").strip() or None)
            runner.reconcile()
            job = runner.get(job.id)
        except (JobError, ValueError, TypeError) as exc:
            return f"⚠️ {exc}", gr.skip(), gr.skip()
        where = "started" if job.state == "running" else \
            f"queued (position {runner.queue_position(job)})" if job.state == "queued" else \
            job.state
        msg = f"✅ Run **{job.run_name}** {where}."
        if job.state == "failed":
            msg = f"❌ {job.error}"
        return (msg, gr.update(choices=run_choices(ctx, runner), value=job.run_dir),
                estimate_markdown(ctx, preset_name, ovr) if job.state != "failed" else gr.skip())

    start.click(on_start, [dataset, dataset_path, preset, run_name, extra_overrides, *widgets],
                [start_status, runs, estimate])

    def tick(run_dir, seen_state):
        seen_state = dict(seen_state or {})
        choices = run_choices(ctx, runner)
        sig = json.dumps(choices)
        runs_update: Any = gr.skip()
        if not run_dir and choices:
            run_dir = _preferred_run(choices, runner)
            runs_update = gr.update(choices=choices, value=run_dir)
            seen_state["runs"] = sig
        elif seen_state.get("runs") != sig:
            runs_update = gr.update(choices=choices)
            seen_state["runs"] = sig
        if not run_dir:
            return (runs_update, "No run yet: pick a dataset and a preset, then Start.", "",
                    gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    seen_state)
        view, job = _view(run_dir)
        if seen_state.get("run") != run_dir:
            seen_state = {"runs": seen_state.get("runs"), "run": run_dir}
        pos = runner.queue_position(job) if job is not None and job.state == "queued" else None
        err = f"❌ **{view.error}**" if view.error else ""
        plot_sig = (len(view.loss), view.loss[-1].step if view.loss else None,
                    view.loss[-1].loss if view.loss else None)
        plot_up: Any = gr.skip()
        if seen_state.get("plot") != list(plot_sig):
            plot_up, seen_state["plot"] = loss_frame(view), list(plot_sig)
        sv = samples_value(view)
        samples_up: Any = gr.skip()
        if seen_state.get("samples") != [p for p, _ in sv]:
            samples_up, seen_state["samples"] = sv, [p for p, _ in sv]
        log_up: Any = gr.skip()
        if seen_state.get("log") != view.log_tail:
            log_up, seen_state["log"] = view.log_tail, view.log_tail
        ck = [str(c["step"]) for c in view.checkpoints if c["complete"] and c["lora"]]
        ck_up: Any = gr.skip()
        if seen_state.get("ckpts") != ck:
            ck_up = gr.update(choices=ck, value=ck[-1] if ck else None)
            seen_state["ckpts"] = ck
        can_cancel = job is not None and job.state in ("queued", "running")
        can_resume = job is not None and job.state in ("failed", "cancelled")
        buttons = (gr.update(interactive=can_cancel), gr.update(interactive=can_resume))
        return (runs_update, status_markdown(view, pos), err, plot_up, samples_up, log_up,
                ck_up, *buttons, seen_state)

    tick_outputs = [runs, status, error, plot, samples, logbox, ckpt, cancel, resume, seen]
    timer.tick(tick, [runs, seen], tick_outputs, show_progress="hidden", queue=False)
    runs.change(tick, [runs, seen], tick_outputs, show_progress="hidden")
    refresh.click(lambda rd, st: tick(rd, {}), [runs, seen], tick_outputs)

    def _view(run_dir: str):
        job = runner.job_for_run(run_dir)
        return get_monitor(run_dir).poll(job), job

    def on_cancel(run_dir):
        job = runner.job_for_run(run_dir) if run_dir else None
        if job is None:
            return ("⚠️ This run was not started from the app; stop it where it runs "
                    "(Ctrl+C or `kill -TERM PID`).")
        try:
            job = runner.cancel(job.id)
        except JobError as exc:
            return f"⚠️ {exc}"
        return ("⏹️ Cancelled." if job.state == "cancelled" else
                "⏹️ Stopping: the trainer saves a checkpoint, then exits.")

    cancel.click(on_cancel, runs, action_status)

    def on_resume(run_dir):
        job = runner.job_for_run(run_dir) if run_dir else None
        if job is None:
            return ("⚠️ This run was not started from the app; resume it with `python -m studio "
                    "train --config RUN/config.yaml --out RUN --resume latest`.")
        try:
            runner.resume(job.id)
            runner.reconcile()
        except JobError as exc:
            return f"⚠️ {exc}"
        job = runner.get(job.id)
        return ("▶️ Resumed from the last checkpoint." if job.state == "running" else
                f"▶️ Queued (position {runner.queue_position(job)}).")

    resume.click(on_resume, runs, action_status)

    def on_compare(run_dir, progress=gr.Progress()):
        from studio.generate.request import GenerationError
        from studio.models import ModelLoadError
        from studio.train.compare import CompareError, compare_grid, validation_pairs

        if not run_dir:
            return gr.skip(), "⚠️ Pick a run first.", gr.skip()
        settings = _compare_settings(run_dir)
        pairs = validation_pairs(run_dir, None)
        try:
            gen = ctx.generation_service().generator()
            rows = compare_grid(run_dir, gen, settings, pairs,
                                progress=lambda d, n: progress(d / n, desc=f"{d}/{n} images"))
        except (CompareError, ModelLoadError, GenerationError) as exc:
            return gr.skip(), f"⚠️ {exc}", gr.skip()
        cells = [(str(c.path), f"checkpoint {c.step} · seed {c.seed} · {c.prompt[:40]}")
                 for row in rows for c in row]
        reused = sum(c.reused for row in rows for c in row)
        steps = [str(r[0].step) for r in rows]
        return (gr.update(value=cells, columns=max(1, len(pairs))),
                f"{len(rows)} checkpoints × {len(pairs)} prompts ({reused} reused validation "
                f"samples, {settings.steps} steps at {settings.width} px).",
                gr.update(choices=steps, value=steps[-1]))

    compare.click(on_compare, runs, [grid, compare_status, ckpt], concurrency_limit=1,
                  concurrency_id="gpu")

    def on_export(run_dir, step):
        from studio.train.compare import CompareError, export_checkpoint

        if not run_dir or not step:
            return "⚠️ Pick a run and a checkpoint."
        try:
            out = export_checkpoint(run_dir, int(step))
        except CompareError as exc:
            return f"⚠️ {exc}"
        return f"✅ Checkpoint {step} is now the run's LoRA ({out.name})."

    export.click(on_export, [runs, ckpt], compare_status)

    return {"send": send, "send_ckpt": send_ckpt, "runs": runs, "ckpt": ckpt,
            "action_status": action_status, "compare_status": compare_status,
            "start": start, "status": status}


def _preferred_run(choices: list[tuple[str, str]], runner: Runner) -> str:
    """The run to show when none is selected: an active job's run, else the newest."""
    active = runner.list(["running"]) or runner.list(["queued"])
    paths = [p for _, p in choices]
    for job in active:
        if job.run_dir in paths:
            return job.run_dir
    return paths[0]


def _compare_settings(run_dir: str):
    from studio.train.compare import CompareSettings

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    val = cfg.get("validation") or {}
    res = int((cfg.get("data") or {}).get("resolution") or 1024)
    return CompareSettings(steps=int(val.get("steps") or 25), width=res, height=res,
                           guidance=float(val.get("guidance") if val.get("guidance") is not None
                                          else 5.0))


def _make_widget(key: str, kind: str, extra: Any, info: Any, value: Any):
    label = key.split(".", 1)[-1]
    help_text = (info.description or "")[:200] or None
    eid = "train-cfg-" + key.replace(".", "-").replace("_", "-")
    if kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=help_text, elem_id=eid)
    if kind == "choice":
        return gr.Dropdown(extra, value=value, label=label, info=help_text, elem_id=eid)
    if kind in ("int", "float"):
        return gr.Number(value=value, label=label, info=help_text, elem_id=eid,
                         precision=0 if kind == "int" else None)
    if kind == "list":
        return gr.Textbox(value=widget_value(kind, value), label=label, lines=2,
                          info=(help_text or "") + " One per line.", elem_id=eid)
    return gr.Textbox(value=widget_value(kind, value), label=label, info=help_text, elem_id=eid,
                      placeholder="(empty)" if kind == "text_opt" else None)


# ---- cross-tab wiring ---------------------------------------------------------------------------
def wire(components: dict[str, dict]) -> None:
    """Connect "Use this LoRA in Generate" to the Generate tab (LoRA + trigger prompt), and
    switch to it."""
    gen = components.get("generate") or {}
    mine = components.get("train") or {}
    tabs = components.get("tabs")
    if not gen.get("prompt") or not gen.get("lora") or tabs is None:
        return

    def to_generate(run_dir, step=None):
        if not run_dir:
            return gr.skip(), gr.skip(), gr.skip(), "⚠️ Pick a run first."
        if step:
            lora = Path(run_dir) / "checkpoints" / f"checkpoint-{int(step):06d}" / \
                "pytorch_lora_weights.safetensors"
        else:
            lora = Path(run_dir) / "pytorch_lora_weights.safetensors"
        if not lora.is_file():
            what = f"checkpoint {step}" if step else "the final LoRA (the run has not finished)"
            return gr.skip(), gr.skip(), gr.skip(), f"⚠️ There is no {what}."
        return (trigger_prompt(run_dir), gr.update(value=str(lora)),
                gr.Tabs(selected="generate"), f"➡️ Sent {lora.name} to Generate.")

    mine["send"].click(lambda rd: to_generate(rd), mine["runs"],
                       [gen["prompt"], gen["lora"], tabs, mine["action_status"]])
    mine["send_ckpt"].click(to_generate, [mine["runs"], mine["ckpt"]],
                            [gen["prompt"], gen["lora"], tabs, mine["compare_status"]])
