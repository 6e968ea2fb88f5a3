"""Train tab acceptance in a real browser, on the tiny models, with the real trainer.

1. dataset + preset -> start -> loss points and samples appear -> cancel (cancelled, with a
   checkpoint) -> resume (steps continue, no gap) -> finish -> compare checkpoints -> export ->
   send to Generate -> generate with the LoRA.
2. reload the page and kill/restart the app during a run: the run is still there and still
   updating; a trainer that dies and a run whose dataset is gone show their cause in one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from _train_support import wait_for
from conftest import start_app

pytestmark = pytest.mark.browser

# Fast settings for the tiny models on a CPU (64 px, 2 denoising steps for samples).
FAST = ["data.resolution=64", "checkpoints.every_n_steps=3", "checkpoints.total_limit=3",
        "validation.every_n_steps=3", "validation.steps=2", "validation.num_images=1",
        "validation.at_end=false", "train.snr_gamma=null"]
STEPS = 24


def make_dataset(home: Path, name: str = "me", n: int = 4) -> Path:
    """A prepared dataset per the dataset contract, registered in the workspace."""
    import numpy as np
    from PIL import Image

    from studio.workspace import Workspace

    root = home / "datasets" / name
    (root / "images").mkdir(parents=True)
    (root / "originals").mkdir()
    rng = np.random.default_rng(0)
    with open(root / "images" / "metadata.jsonl", "w") as fh:
        for i in range(n):
            arr = (rng.random((64, 64, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(root / "images" / f"{i:04d}.png")
            fh.write(json.dumps({"file_name": f"{i:04d}.png",
                                 "text": f"a photo of TOK person, view {i}"}) + "\n")
    (root / "dataset.json").write_text(json.dumps({
        "name": name, "trigger": "TOK", "class_word": "person",
        "template": "a photo of TOK person, {caption}", "hash": "test", "created": time.time(),
        "count": n, "framing": "face"}))
    (root / "report.json").write_text("{}")
    Workspace(home).register_dataset(name, root, {"count": n, "trigger": "TOK"})
    return root


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def current_step(page) -> int:
    m = re.search(r"step (\d+) / (\d+)", status_text(page))
    return int(m.group(1)) if m else -1


def wait_until(pred, timeout=120.0, what="condition", page=None):
    detail = (lambda: f"status: {status_text(page)}") if page is not None else None
    return wait_for(pred, timeout, what=what, interval=0.5, detail=detail)


def jobs(home: Path) -> list[dict]:
    with sqlite3.connect(home / "registry.sqlite") as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]


def kill_trainings(home: Path) -> None:
    from studio.jobs.process import process_alive

    if not (home / "registry.sqlite").exists():
        return
    for j in jobs(home):
        if j["state"] == "running" and j["pgid"] and process_alive(j["pid"], j["proc_start"]):
            os.killpg(j["pgid"], signal.SIGKILL)


def step_events(run_dir: Path) -> list[dict]:
    out = []
    if not (run_dir / "events.jsonl").exists():
        return out
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def open_train_tab(page) -> None:
    """The Dataset tab opens first; the Train tab is the second."""
    page.get_by_role("tab", name="Train").click()


def start_run(page, url: str, steps: int, dataset_label: str = "me (4 images)",
              also_listed: tuple[str, ...] = ()) -> None:
    page.goto(url)
    open_train_tab(page)
    page.locator("#train-dataset input").click()
    for label in also_listed:
        page.get_by_role("option", name=label).wait_for(timeout=10_000)
    page.get_by_role("option", name=dataset_label).click()
    page.locator("#train-advanced").get_by_text("Advanced settings").first.click()
    overrides = "\n".join([*FAST, f"train.max_train_steps={steps}"])
    page.locator("#train-overrides textarea").fill(overrides)
    page.locator("#train-start").click()
    wait_until(lambda: "✅ Run" in page.locator("#train-start-status").inner_text(), 60,
               "the run to start", page)


@pytest.fixture()
def cleanup(home):
    yield
    kill_trainings(home)


def test_train_cancel_resume_compare_and_generate(home, tiny_models, page, cleanup):
    make_dataset(home)
    app = start_app(home, tiny_models)
    try:
        make_dataset(home, "later")  # saved after the app started: the Train tab lists it too
        start_run(page, app.url, steps=STEPS, also_listed=("later (4 images)",))
        job = wait_until(lambda: next((j for j in jobs(home) if j["pgid"]), None), 60,
                         "the job's process", page)
        run_dir = Path(job["run_dir"])
        # The tiny run can finish in seconds on a quiet machine, before a person (or this test)
        # clicks Cancel. Freeze the trainer (SIGSTOP) as soon as it has a checkpoint and a sample
        # so the cancel lands mid-run however fast the machine is; the click's SIGTERM waits
        # in the kernel until SIGCONT, exactly as if the trainer were busy in a long step.
        deadline = time.time() + 180
        while not {"checkpoint", "sample"} <= {e["type"] for e in step_events(run_dir)}:
            assert time.time() < deadline, "no checkpoint and sample within 180 s"
            assert not any(e["type"] == "end" for e in step_events(run_dir)), "ended too soon"
            time.sleep(0.02)
        os.killpg(job["pgid"], signal.SIGSTOP)
        try:
            # The live view: steps, the loss plot, sample images, a checkpoint.
            wait_until(lambda: current_step(page) >= 1, 60, "steps", page)
            assert "running" in status_text(page)
            wait_until(lambda: page.locator("#train-loss canvas, #train-loss svg").count() > 0,
                       30, "the loss plot")
            wait_until(lambda: page.locator("#train-samples img").count() >= 1, 60, "samples",
                       page)
            wait_until(lambda: "none yet" not in status_text(page), 60, "a checkpoint", page)
            page.locator("#train-cancel").click()
            wait_until(lambda: "Stopping" in page.locator("#train-action-status").inner_text(),
                       30, "the stop request")
        finally:
            os.killpg(job["pgid"], signal.SIGCONT)
        wait_until(lambda: "cancelled" in status_text(page), 90, "cancelled", page)
        assert "none yet" not in status_text(page)  # it has a checkpoint
        job = jobs(home)[0]
        assert job["state"] == "cancelled" and job["exit_code"] == 3
        ckpts = sorted((run_dir / "checkpoints").glob("checkpoint-*/COMPLETE"))
        assert ckpts
        stopped = max(e["step"] for e in step_events(run_dir) if e["type"] == "step")
        assert stopped < STEPS

        page.locator("#train-resume").click()
        wait_until(lambda: "Resumed" in page.locator("#train-action-status").inner_text(), 30,
                   "resume")
        wait_until(lambda: "finished" in status_text(page), 240, "the run to finish", page)
        evs = step_events(run_dir)
        starts = [e for e in evs if e["type"] == "start"]
        assert len(starts) == 2 and starts[1]["step"] > 0  # continued, not restarted at 0
        second = [e["step"] for e in evs[evs.index(starts[1]):] if e["type"] == "step"]
        assert second == list(range(starts[1]["step"] + 1, STEPS + 1))  # contiguous to the end
        assert starts[1]["step"] <= stopped
        assert f"step {STEPS} / {STEPS}" in status_text(page)  # the plot went on to the end

        # Compare checkpoints: a grid of checkpoints x validation prompts.
        page.locator("#train-compare").get_by_text("Compare checkpoints").first.click()
        page.locator("#train-compare-button").click()
        n_ckpt = len(list((run_dir / "checkpoints").glob("checkpoint-*/COMPLETE")))
        wait_until(lambda: page.locator("#train-compare-grid img").count() >= n_ckpt, 180,
                   "the comparison grid")
        assert list((run_dir / "compare").glob("*.png")) or \
            "reused" in page.locator("#train-compare-status").inner_text()
        page.locator("#train-export").click()
        wait_until(lambda: "is now the run's LoRA" in
                   page.locator("#train-compare-status").inner_text(), 30, "export")
        assert json.loads((run_dir / "selected_checkpoint.json").read_text())["checkpoint"] > 0

        # Send the LoRA to Generate and generate with it.
        page.locator("#train-send").click()
        wait_until(lambda: page.locator("#gen-prompt textarea").is_visible(), 30,
                   "the Generate tab")
        assert "TOK person" in page.locator("#gen-prompt textarea").input_value()
        # The LoRA list shows runs by name once the tab-open event has read the runs again.
        wait_until(lambda: page.locator("#gen-lora input").input_value() == run_dir.name, 60,
                   "the run's name in Generate's LoRA field")
        for eid, val in (("gen-width", 64), ("gen-height", 64), ("gen-steps", 2)):
            box = page.locator(f"#{eid} input[type=number]")
            box.fill(str(val))
            box.press("Enter")
        page.locator("#gen-button").click()
        wait_until(lambda: "Done:" in page.locator("#gen-status").inner_text(), 180, "generation")
        assert page.locator("#gen-gallery img").count() >= 1
        gallery_pngs = list((home / "gallery").rglob("*.png"))
        assert gallery_pngs
    finally:
        app.stop()


def test_reload_and_app_restart_during_a_run(home, tiny_models, page, cleanup):
    ds = make_dataset(home)
    app = start_app(home, tiny_models)
    try:
        start_run(page, app.url, steps=2000)
        wait_until(lambda: current_step(page) >= 2, 120, "steps", page)
        page.reload()
        open_train_tab(page)
        wait_until(lambda: current_step(page) >= 2, 30, "the run after a reload", page)
        before = current_step(page)
        wait_until(lambda: current_step(page) > before, 60, "updates after a reload", page)
        job = jobs(home)[0]
        app.proc.kill()  # the app dies; the training must go on
        app.proc.wait()
    finally:
        app.stop()
    from studio.jobs.process import process_alive

    assert process_alive(job["pid"], job["proc_start"])
    app = start_app(home, tiny_models)
    try:
        page.goto(app.url)
        open_train_tab(page)
        wait_until(lambda: "running" in status_text(page), 30, "the re-adopted run", page)
        s = current_step(page)
        wait_until(lambda: current_step(page) > s, 60, "updates after the restart", page)
        again = jobs(home)
        assert len(again) == 1 and again[0]["pid"] == job["pid"]  # re-adopted, not restarted

        os.killpg(job["pgid"], signal.SIGKILL)  # the trainer dies without an end event
        wait_until(lambda: "failed" in status_text(page), 30, "the dead run marked", page)
        assert page.locator("#train-error").inner_text().strip()

        # A failed run whose dataset is gone: resume shows the cause in one line.
        ds.rename(ds.with_name("gone"))
        first_attempt = jobs(home)[0]["started"]
        page.locator("#train-resume").click()
        wait_until(lambda: jobs(home)[0]["started"] != first_attempt
                   and jobs(home)[0]["state"] == "failed", 120, "the failure", page)
        wait_until(lambda: "failed" in status_text(page), 30, "the failure shown", page)
        err = page.locator("#train-error").inner_text().strip()
        assert "\n" not in err and "exited with code" not in err
        assert "me" in err and ("exist" in err.lower() or "not found" in err.lower())
    finally:
        app.stop()


def finished_run(home: Path, name: str, lora: bool = True) -> Path:
    """A finished run folder as the trainer leaves it (12 loss points, a checkpoint)."""
    from studio.config import load_config
    from studio.runs.folder import RunFolder
    from studio.workspace import Workspace

    run = RunFolder(home / "runs" / name)
    run.path.mkdir(parents=True)
    run.save_config(load_config(overrides=["data.resolution=64", "train.max_train_steps=12"]))
    events = [{"type": "start", "step": 0, "total_steps": 12, "resumed_from": None}]
    events += [{"type": "step", "step": s, "total_steps": 12, "loss": 0.5 + 0.05 * (s % 3),
                "lr": 1e-4, "epoch": 0, "steps_per_s": 1.0, "eta_s": 12 - s, "mem_gb": 0.0}
               for s in range(1, 13)]
    events.append({"type": "end", "status": "finished", "step": 12, "message": "Finished."})
    run.events_path.write_text("".join(json.dumps({"time": 1.0, **e}) + "\n" for e in events))
    if lora:
        (run.path / run.LORA).write_bytes(b"x")
    Workspace(home).register_run(name, run.path)
    return run.path


def options(page, eid: str) -> list[str]:
    page.locator(f"#{eid} input").click()
    texts = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    return [t.strip() for t in texts]


def test_lists_simple_mode_disabled_buttons_legend_and_delete(home, tiny_models, page):
    """Issue 13 in a browser, without training: lists after a reload and ↻, the simple mode on
    top, buttons disabled with no run, the loss legend, a preset change that keeps an edit,
    and the two-step delete."""
    make_dataset(home)
    app = start_app(home, tiny_models)
    try:
        page.goto(app.url)
        open_train_tab(page)
        # No run: nothing to cancel, resume, send or delete.
        for eid in ("train-cancel", "train-resume", "train-send", "train-delete"):
            assert page.locator(f"#{eid}").is_disabled(), eid
        # The simple settings are on top, Advanced stays closed.
        steps = page.locator("#train-cfg-train-max-train-steps input")
        assert steps.is_visible() and steps.input_value() == "500"
        assert not page.locator("#train-cfg-checkpoints-total-limit").is_visible()
        # A preset change keeps the user's edit and says so.
        steps.fill("45")
        steps.press("Tab")
        wait_until(lambda: "45 steps" in page.locator("#train-estimate").inner_text(), 30,
                   "the estimate to follow the steps")
        page.locator("#train-preset input").click()
        page.get_by_role("option", name="style", exact=True).click()
        wait_until(lambda: "Kept your changes" in page.locator("#train-preset-note").inner_text(),
                   30, "the kept-changes note")
        assert steps.input_value() == "45"
        assert page.locator("#train-cfg-lora-rank input").input_value() == "32"

        # Made after the page loaded: ↻ lists the dataset, a reload lists everything.
        make_dataset(home, "later")
        page.locator("#train-dataset-refresh").click()
        wait_until(lambda: "later (4 images)" in options(page, "train-dataset"), 30, "↻")
        finished_run(home, "done")
        make_dataset(home, "third")
        page.reload()
        open_train_tab(page)
        wait_until(lambda: "third (4 images)" in options(page, "train-dataset"), 30,
                   "the dataset list after a reload")
        wait_until(lambda: "finished" in status_text(page), 30, "the run after a reload", page)
        assert page.locator("#train-send").is_enabled()
        legend = page.locator("#train-loss svg text", has_text="smoothed")
        wait_until(lambda: legend.count() > 0, 30, "the loss legend")
        box, plot = legend.first.bounding_box(), page.locator("#train-loss").bounding_box()
        assert box["y"] + box["height"] <= plot["y"] + plot["height"]  # not cut off
        ticks = [t for t in page.locator("#train-loss svg text").all_text_contents()
                 if re.fullmatch(r"[\d.]+", t)]
        assert "1.5" not in ticks and "0.5" not in ticks[:3]

        # Delete: the first click only asks; Keep keeps; Confirm deletes.
        page.locator("#train-delete").click()
        page.locator("#train-delete-keep").click()
        assert (home / "runs" / "done").is_dir()
        page.locator("#train-delete").click()
        page.locator("#train-delete-confirm").click()
        wait_until(lambda: "Deleted run" in page.locator("#train-delete-status").inner_text(),
                   30, "the deletion")
        assert not (home / "runs" / "done").exists()
        assert not any("done" in o for o in options(page, "train-runs"))
    finally:
        app.stop()
