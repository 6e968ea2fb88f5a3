"""The Train tab's housekeeping: deleting a run (two steps: "Delete run", then "Confirm delete"
or "Keep") and the queue view (the running job and the waiting ones with their position; a
waiting one can be cancelled). Deletion and cancel go through the job service
(studio.jobs.service), which owns the job table and asks the run folder to delete itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import StudioError, first_line
from studio.jobs.table import JobError
from studio.ui.context import AppContext
from studio.ui.train_view import run_choices

QUEUE_EMPTY = "No training is running or waiting."


def queue_markdown(running: list, waiting: list) -> str:
    """The queue as a Markdown table: the running job first, then the waiting ones in order."""
    if not running and not waiting:
        return QUEUE_EMPTY
    rows = ["| position | run | state |", "| --- | --- | --- |"]
    rows += [f"| now | {j.run_name} | 🏃 running |" for j in running]
    rows += [f"| {i} | {j.run_name} | ⏳ waiting |" for i, j in enumerate(waiting, 1)]
    return "\n".join(rows)


class ManageHandlers:
    """Delete and queue events of the Train tab."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx
        self.service = ctx.job_service()

    # ---- delete a run ------------------------------------------------------------------------
    def ask_delete(self, run_dir: str | None) -> tuple:
        """First step: (confirmation row, message). Nothing is deleted yet."""
        if not run_dir:
            return gr.update(visible=False), "⚠️ Pick a run first."
        job = self.service.job_for_run(run_dir)
        if job is not None and job.state in ("queued", "running"):
            return (gr.update(visible=False),
                    f"⚠️ Run **{job.run_name}** is {job.state}; cancel it first, then delete it.")
        return (gr.update(visible=True),
                f"Delete run **{Path(run_dir).name}** with its checkpoints, LoRA and samples? "
                "This cannot be undone.")

    def keep(self) -> tuple:
        return gr.update(visible=False), "Kept."

    def confirm_delete(self, run_dir: str | None) -> tuple:
        """Second step: (confirmation row, message, runs dropdown)."""
        try:
            name = self.service.delete_run(run_dir or "")
        except StudioError as exc:
            return gr.update(visible=False), f"⚠️ {first_line(exc)}", gr.skip()
        runs = gr.update(choices=run_choices(self.ctx, self.service), value=None)
        return gr.update(visible=False), f"🗑️ Deleted run **{name}**.", runs

    # ---- the queue ---------------------------------------------------------------------------
    def queue(self, seen: str | None = None) -> tuple:
        """(queue table, waiting-job dropdown, signature): gr.skip() while nothing changed."""
        running = self.service.list(["running"])
        waiting = sorted(self.service.list(["queued"]), key=lambda j: (j.queued, j.id))
        sig = json.dumps([[j.id for j in running], [j.id for j in waiting]])
        if sig == seen:
            return gr.skip(), gr.skip(), seen
        choices = [(f"{i}. {j.run_name}", str(j.id)) for i, j in enumerate(waiting, 1)]
        return (queue_markdown(running, waiting),
                gr.update(choices=choices, value=choices[0][1] if choices else None), sig)

    def cancel_waiting(self, job_id: str | None) -> tuple:
        """(message, queue table, waiting dropdown, signature)."""
        if not job_id:
            return ("⚠️ No waiting job is selected.", *self.queue(None))
        try:
            job = self.service.get(int(job_id))
            if job.state != "queued":
                raise JobError(f"{job.run_name} is {job.state}, no longer waiting; use Cancel "
                                 "above for a running job.")
            job = self.service.cancel(job.id)
        except StudioError as exc:
            return (f"⚠️ {first_line(exc)}", *self.queue(None))
        return (f"⏹️ Removed **{job.run_name}** from the queue (Resume queues it again).",
                *self.queue(None))


def build_delete(c: dict[str, Any]) -> None:
    with gr.Row():
        c["delete"] = gr.Button("Delete run…", elem_id="train-delete", size="sm", scale=0,
                                min_width=160, interactive=False)
    with gr.Row(visible=False, elem_id="train-delete-confirm-row") as c["delete_row"]:
        c["delete_confirm"] = gr.Button("Confirm delete", variant="stop", size="sm",
                                        elem_id="train-delete-confirm")
        c["delete_keep"] = gr.Button("Keep", size="sm", elem_id="train-delete-keep")
    c["delete_status"] = gr.Markdown(elem_id="train-delete-status")


def build_queue(c: dict[str, Any]) -> None:
    with gr.Accordion("Queue", open=False, elem_id="train-queue"):
        gr.Markdown("One training runs at a time; the others wait in this order.")
        c["queue"] = gr.Markdown(QUEUE_EMPTY, elem_id="train-queue-table")
        with gr.Row():
            c["waiting"] = gr.Dropdown(choices=[], value=None, label="Waiting job", scale=3,
                                       elem_id="train-queue-waiting")
            c["cancel_waiting"] = gr.Button("Cancel waiting job", size="sm", scale=1,
                                            elem_id="train-queue-cancel")
        c["queue_status"] = gr.Markdown(elem_id="train-queue-status")
        c["queue_seen"] = gr.State(None)


def wire_manage(m: ManageHandlers, c: dict[str, Any]) -> None:
    c["delete"].click(m.ask_delete, c["runs"], [c["delete_row"], c["delete_status"]])
    c["delete_keep"].click(m.keep, None, [c["delete_row"], c["delete_status"]])
    c["delete_confirm"].click(m.confirm_delete, c["runs"],
                              [c["delete_row"], c["delete_status"], c["runs"]])
    queue_out = [c["queue"], c["waiting"], c["queue_seen"]]
    c["timer"].tick(m.queue, c["queue_seen"], queue_out, show_progress="hidden", queue=False)
    c["cancel_waiting"].click(m.cancel_waiting, c["waiting"], [c["queue_status"], *queue_out])
