"""Deleting a run and the queue view of the Train tab (issue 13), through the real job service
with a fake trainer command (no training process is started unless a test asks)."""

from __future__ import annotations

import os
import sys

import gradio as gr
import pytest
from _train_support import make_dataset

from studio.config import load_config
from studio.jobs.service import JobService
from studio.jobs.table import JobError
from studio.ui.context import AppContext
from studio.ui.train_manage import QUEUE_EMPTY, ManageHandlers


@pytest.fixture()
def svc(workspace):
    # A "trainer" that sleeps: jobs get a real process, and never train.
    return JobService(workspace, trainer_cmd=[sys.executable, "-c", "import time; "
                                              "time.sleep(60)"], kill_after_s=1)


def _submit(svc, workspace, name):
    ds = workspace.datasets_dir / "me"
    if not ds.exists():
        make_dataset(ds)
    cfg = load_config(overrides=[f"data.dataset={ds}", "train.max_train_steps=2"])
    return svc.submit(cfg, run_name=name)


def _stop_all(svc):
    for job in svc.list(["running", "queued"]):
        try:
            svc.cancel(job.id)
        except JobError:
            pass
    for job in svc.list(["running"]):
        os.killpg(job.pgid, 9)
        svc.wait(job.id, timeout=30)


def test_delete_is_two_steps_and_refuses_an_active_run(workspace, svc):
    m = ManageHandlers(AppContext(workspace=workspace, jobs=svc))
    a = _submit(svc, workspace, "a")
    b = _submit(svc, workspace, "b")
    try:
        svc.reconcile()  # a runs, b waits
        assert svc.get(a.id).state == "running" and svc.get(b.id).state == "queued"
        for job in (a, b):
            row, msg = m.ask_delete(job.run_dir)
            assert row["visible"] is False and "cancel it first" in msg
            row, msg, runs = m.confirm_delete(job.run_dir)  # even without the first step
            assert "cancel it first" in msg and runs == gr.skip()
            assert os.path.isdir(job.run_dir)
    finally:
        _stop_all(svc)
    row, msg = m.ask_delete(b.run_dir)
    assert row["visible"] is True and "cannot be undone" in msg
    assert os.path.isdir(b.run_dir)  # asking deletes nothing
    assert m.keep()[0]["visible"] is False and os.path.isdir(b.run_dir)
    row, msg, runs = m.confirm_delete(b.run_dir)
    assert msg == "🗑️ Deleted run **b**." and row["visible"] is False
    assert not os.path.exists(b.run_dir)
    assert [v for _, v in runs["choices"]] == [str(workspace.runs_dir.resolve() / "a")]
    assert svc.job_for_run(b.run_dir) is None
    assert [r["name"] for r in workspace.list_runs()] == ["a"]


@pytest.mark.parametrize("trick", ["../datasets/me", "/etc", "", "a/../../datasets/me",
                                   "link"])
def test_delete_refuses_paths_outside_the_runs(workspace, svc, trick):
    _submit(svc, workspace, "a")
    (workspace.runs_dir / "link").symlink_to(workspace.datasets_dir / "me")
    target = trick if trick in ("", "/etc") else str(workspace.runs_dir / trick)
    with pytest.raises(JobError):
        svc.delete_run(target)
    assert (workspace.datasets_dir / "me" / "dataset.json").is_file()
    assert (workspace.runs_dir / "a").is_dir()


def test_queue_view_lists_positions_and_cancels_a_waiting_job(workspace, svc):
    m = ManageHandlers(AppContext(workspace=workspace, jobs=svc))
    table, waiting, seen = m.queue(None)
    assert table == QUEUE_EMPTY and waiting["choices"] == []
    assert m.queue(seen)[0] == gr.skip()  # unchanged: nothing is sent
    a, b, c = (_submit(svc, workspace, n) for n in "abc")
    try:
        svc.reconcile()
        table, waiting, seen = m.queue(seen)
        assert "| now | a | 🏃 running |" in table
        assert "| 1 | b | ⏳ waiting |" in table and "| 2 | c | ⏳ waiting |" in table
        assert waiting["choices"] == [("1. b", str(b.id)), ("2. c", str(c.id))]
        msg, table, waiting, seen = m.cancel_waiting(str(b.id))
        assert msg.startswith("⏹️ Removed **b**") and svc.get(b.id).state == "cancelled"
        assert "| 1 | c | ⏳ waiting |" in table and "| b |" not in table
        msg, *_ = m.cancel_waiting(str(a.id))  # the running one is not cancelled here
        assert msg.startswith("⚠️") and svc.get(a.id).state == "running"
    finally:
        _stop_all(svc)
