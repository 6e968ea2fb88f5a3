"""The Train tab's event handlers: one method per event, each mapping widget values to a call of
the job service (studio.jobs.service), the run folder (studio.runs) or the checkpoint
comparison (studio.train.compare), and the result back to widget updates.

A :class:`~studio.errors.StudioError` from the core becomes the one line in the tab's message
box; anything else is a bug and reaches Gradio's error toast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from studio import config as cfgmod
from studio.errors import StudioError, first_line
from studio.runs.export import export_checkpoint
from studio.runs.folder import RunFolder
from studio.runs.monitor import get_monitor
from studio.train.compare import compare_grid, compare_settings, validation_pairs
from studio.ui.config_widgets import extra_lines, overrides_from_widgets, preset_note, preset_values
from studio.ui.context import AppContext
from studio.ui.train_likeness import cell_scores
from studio.ui.train_simple import kept_note, refill
from studio.ui.train_view import (
    dataset_choices,
    estimate_markdown,
    loss_axis,
    loss_frame,
    preferred_run,
    run_choices,
    samples_value,
    status_markdown,
)
from studio.workspace import safe_join

NO_RUN = "No run yet: pick a dataset and a preset, then Start."
NOT_FROM_APP = "⚠️ This run was not started from the app; "


def _warn(exc: BaseException) -> str:
    return f"⚠️ {first_line(exc)}"


class TrainHandlers:
    """The Train tab's handlers for one app: ``widget_keys`` are the (dotted key, kind) of the
    advanced-settings widgets, in the order their values arrive."""

    def __init__(self, ctx: AppContext, widget_keys: list[tuple[str, str]],
                 can_train: bool = True, why_not: str = ""):
        self.ctx = ctx
        self.service = ctx.job_service()
        self.widget_keys = widget_keys
        self.can_train = can_train
        self.why_not = why_not

    # ---- starting a run ------------------------------------------------------------------------
    def refresh_datasets(self) -> dict:
        return gr.update(choices=dataset_choices(self.ctx))

    def select_dataset(self, dataset: str | None) -> tuple:
        """(dataset dropdown, tabs): the Train tab opened with ``dataset`` (a workspace dataset's
        name or folder) picked, e.g. from the Dataset tab's "Train on this dataset"."""
        choices = dataset_choices(self.ctx)
        text = str(dataset or "").strip()
        value = next((path for label, path in choices if text and (
            path == text or Path(path).name == Path(text).name)), None)
        return gr.update(choices=choices, value=value), gr.Tabs(selected="train")

    def estimate(self, preset: str | None, overrides: list[str]) -> str:
        try:
            cfg = cfgmod.load_config(preset=preset or None, overrides=overrides)
        except StudioError as exc:
            return _warn(exc)
        return estimate_markdown(self.ctx, cfg)

    def overrides(self, pvalues: dict | None, extra: str | None, wvals) -> list[str]:
        """The widgets that differ from the preset's values, then the extra lines."""
        ovr = overrides_from_widgets(self.widget_keys, list(wvals), pvalues or {}) \
            if self.widget_keys else []
        return ovr + extra_lines(extra)

    def on_preset(self, preset: str | None, extra: str | None, old: dict | None,
                  *wvals) -> list:
        """A preset was picked: its note, its values in the widgets the user did not change (the
        changed ones keep the user's value, and the note says so), the state the overrides are
        computed against, the estimate. A preset that does not load changes no field."""
        pv = preset_values(preset)
        if not pv:
            return [gr.skip(), self.estimate(preset, []), gr.skip(),
                    *[gr.skip()] * len(self.widget_keys)]
        updates, kept = refill(self.widget_keys, list(wvals), old or {}, pv)
        shown = {k: v for (k, _), v in zip(self.widget_keys, wvals, strict=True)}
        try:
            estimate = self.estimate(preset, self.overrides(pv, extra, wvals))
        except StudioError as exc:
            estimate = _warn(exc)
        return [pv, preset_note(preset) + kept_note(kept, shown), estimate, *updates]

    def on_estimate(self, preset: str | None, extra: str | None, pvalues: dict | None,
                    *wvals) -> str:
        try:
            return self.estimate(preset, self.overrides(pvalues, extra, wvals))
        except StudioError as exc:
            return _warn(exc)

    def dataset_folder(self, choice: str | None, typed: str | None) -> str:
        """The folder typed in (beyond localhost: only a workspace dataset's name), else the
        picked dataset."""
        typed = (typed or "").strip()
        if not typed:
            return choice or ""
        if self.ctx.remote:  # users pick workspace datasets, never server folders
            return str(safe_join(self.ctx.workspace.datasets_dir, *Path(typed).parts[-1:]))
        return typed

    def on_start(self, ds_choice, ds_path, preset, name, extra, pvalues, *wvals):
        """Start: the config is built once (preset loaded once) and written once by submit."""
        if not self.can_train:
            return f"**Training is not available here.** {self.why_not}", gr.skip(), gr.skip()
        svc = self.service
        try:
            folder = self.dataset_folder(ds_choice, ds_path)
            cfg = svc.build_config(folder, preset or None, self.overrides(pvalues, extra, wvals))
            job = svc.submit(cfg, run_name=(name or "").strip() or None, preset=preset or None)
            svc.reconcile()  # start it now when nothing else trains
            job = svc.get(job.id)
        except StudioError as exc:
            return _warn(exc), gr.skip(), gr.skip()
        runs = gr.update(choices=run_choices(self.ctx, svc), value=job.run_dir)
        if job.state == "failed":
            return f"❌ {job.error}", runs, gr.skip()
        where = ("started" if job.state == "running" else
                 f"queued (position {svc.queue_position(job)})" if job.state == "queued" else
                 job.state)
        return f"✅ Run **{job.run_name}** {where}.", runs, estimate_markdown(self.ctx, cfg)

    # ---- the live view -------------------------------------------------------------------------
    def tick(self, run_dir: str | None, seen_state: dict | None) -> tuple:
        """Poll the selected run; a component whose content did not change gets gr.skip()
        (``seen`` remembers per page what the client shows)."""
        seen = dict(seen_state or {})
        run_dir, runs_up = self._runs_update(run_dir, seen)
        off = gr.update(interactive=False)
        if not run_dir:
            return (runs_up, NO_RUN, "", *[gr.skip()] * 4, off, off, off, off, seen)
        job = self.service.job_for_run(run_dir)
        view = get_monitor(run_dir).poll(job)
        if seen.get("run") != run_dir:
            seen = {"runs": seen.get("runs"), "run": run_dir}
        pos = self.service.queue_position(job) if job is not None and job.state == "queued" \
            else None
        err = f"❌ **{view.error}**" if view.error else ""
        can_cancel = job is not None and job.state in ("queued", "running")
        can_resume = job is not None and job.state in ("failed", "cancelled")
        return (runs_up, status_markdown(view, pos), err, *self._changed(view, seen),
                gr.update(interactive=can_cancel), gr.update(interactive=can_resume),
                gr.update(interactive=RunFolder(run_dir).has_lora()),
                gr.update(interactive=not can_cancel), seen)

    def refresh(self, run_dir: str | None, seen_state: dict | None) -> tuple:
        return self.tick(run_dir, {})

    def _runs_update(self, run_dir: str | None, seen: dict) -> tuple[str | None, Any]:
        choices = run_choices(self.ctx, self.service)
        sig = json.dumps(choices)
        if not run_dir and choices:
            run_dir = preferred_run(choices, self.service)
            seen["runs"] = sig
            return run_dir, gr.update(choices=choices, value=run_dir)
        if seen.get("runs") != sig:
            seen["runs"] = sig
            return run_dir, gr.update(choices=choices)
        return run_dir, gr.skip()

    @staticmethod
    def _changed(view, seen: dict) -> tuple:
        """(plot, samples, log, checkpoint dropdown): new values, or gr.skip() when unchanged."""
        out: list[Any] = []
        sv = samples_value(view)
        ck = [str(c["step"]) for c in view.checkpoints if c["complete"] and c["lora"]]
        plot_sig = [len(view.loss), view.loss[-1].step if view.loss else None,
                    view.loss[-1].loss if view.loss else None]
        for key, sig, make in (
                ("plot", plot_sig, lambda: gr.update(value=loss_frame(view),
                                                     x_lim=loss_axis(view))),
                ("samples", [p for p, _ in sv], lambda: sv),
                ("log", view.log_tail, lambda: view.log_tail),
                ("ckpts", ck, lambda: gr.update(choices=ck, value=ck[-1] if ck else None))):
            if seen.get(key) != sig:
                out.append(make())
                seen[key] = sig
            else:
                out.append(gr.skip())
        return tuple(out)

    # ---- job actions ---------------------------------------------------------------------------
    def on_cancel(self, run_dir: str | None) -> str:
        job = self.service.job_for_run(run_dir) if run_dir else None
        if job is None:
            return NOT_FROM_APP + "stop it where it runs (Ctrl+C or `kill -TERM PID`)."
        try:
            job = self.service.cancel(job.id)
        except StudioError as exc:
            return _warn(exc)
        return ("⏹️ Cancelled; press Resume to continue." if job.state == "cancelled" else
                "⏹️ Stopping: the trainer saves a checkpoint, then exits; press Resume to "
                "continue from it.")

    def on_resume(self, run_dir: str | None) -> str:
        job = self.service.job_for_run(run_dir) if run_dir else None
        if job is None:
            return NOT_FROM_APP + ("resume it with `python -m studio train --config "
                                   "RUN/config.yaml --out RUN --resume latest`.")
        try:
            self.service.resume(job.id)
            self.service.reconcile()
            job = self.service.get(job.id)
        except StudioError as exc:
            return _warn(exc)
        return ("▶️ Resumed from the last checkpoint." if job.state == "running" else
                f"▶️ Queued (position {self.service.queue_position(job)}).")

    # ---- checkpoints -----------------------------------------------------------------------------
    def on_compare(self, run_dir: str | None, progress=gr.Progress()) -> tuple:  # noqa: B008
        """The checkpoints x validation prompts grid (generated once, cached in the run)."""
        if not run_dir:
            return gr.skip(), "⚠️ Pick a run first.", gr.skip()
        try:
            settings = compare_settings(run_dir)
            pairs = validation_pairs(run_dir)
            gen = self.ctx.generation_service().generator()
            rows = compare_grid(run_dir, gen, settings, pairs,
                                progress=lambda d, n: progress(d / n, desc=f"{d}/{n} images"))
        except StudioError as exc:
            return gr.skip(), _warn(exc), gr.skip()
        scores = cell_scores(run_dir, [c.path for row in rows for c in row])
        cells = [(str(c.path), f"checkpoint {c.step} · seed {c.seed} · {c.prompt[:40]}"
                  f"{scores.get(c.path, '')}") for row in rows for c in row]
        reused = sum(c.reused for row in rows for c in row)
        steps = [str(r[0].step) for r in rows]
        return (gr.update(value=cells, columns=max(1, len(pairs))),
                f"{len(rows)} checkpoints × {len(pairs)} prompts ({reused} reused validation "
                f"samples, {settings.steps} steps at {settings.width} px).",
                gr.update(choices=steps, value=steps[-1]))

    def on_export(self, run_dir: str | None, step: str | None) -> str:
        if not run_dir or not step:
            return "⚠️ Pick a run and a checkpoint."
        try:
            out = export_checkpoint(run_dir, int(step))
        except StudioError as exc:
            return _warn(exc)
        return f"✅ Checkpoint {step} is now the run's LoRA ({out.name})."

    # ---- hand-off to the Generate tab ------------------------------------------------------------
    def to_generate(self, run_dir: str | None, step: str | None = None) -> tuple:
        """(prompt, LoRA, selected tab, status): the run's final LoRA, or checkpoint ``step``,
        with the prompt that names the subject."""
        if not run_dir:
            return gr.skip(), gr.skip(), gr.skip(), "⚠️ Pick a run first."
        run = RunFolder(run_dir)
        try:
            lora = run.checkpoint(int(step)).lora_path if step else run.lora_path
        except StudioError as exc:
            return gr.skip(), gr.skip(), gr.skip(), _warn(exc)
        if not lora.is_file():
            return (gr.skip(), gr.skip(), gr.skip(),
                    "⚠️ There is no final LoRA (the run has not finished).")
        return (run.instance_prompt(), gr.update(value=str(lora)),
                gr.Tabs(selected="generate"), f"➡️ Sent {lora.name} to Generate.")

    def send_final(self, run_dir: str | None) -> tuple:
        return self.to_generate(run_dir)
