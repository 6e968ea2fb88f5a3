"""A new user's whole journey in a real browser, by clicks and choices only (no folder path is
typed anywhere): upload photos, process, edit a caption beside its image, save; reload; open
the dataset and "Train on this dataset" in simple mode at 64 px; watch the loss, cancel,
resume, finish, compare checkpoints; "Use this LoRA in Generate"; generate with and without
the refiner; reuse an image's settings; export the gallery; reload; download the bundle;
delete the run and the dataset, and see them gone from every list.

The app runs on the tiny random-weight models (conftest.start_app passes the operator's base,
refiner and captioner, as ``--base``/``--refiner`` would).
"""

from __future__ import annotations

import os
import signal
import time
import zipfile
from pathlib import Path

import dataset_photos as dp
import pytest
from test_train_tab_browser import (
    current_step,
    jobs,
    kill_trainings,
    status_text,
    step_events,
    wait_until,
)

from studio.runs.folder import RunFolder

pytestmark = pytest.mark.browser

DATASET = "journey"
STEPS = 12
SHOTS = Path(os.environ.get("STUDIO_JOURNEY_SHOTS", "/tmp/journey-shots"))


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def value(page, elem: str) -> str:
    return page.locator(f"#{elem} textarea, #{elem} input").first.input_value()


def options(page, elem: str) -> list[str]:
    """The option labels of dropdown ``elem`` (opened and closed again, as a person would)."""
    page.locator(f"#{elem} input").first.click()
    page.get_by_role("option").first.wait_for()
    # (the chosen option carries a check mark on a line of its own)
    names = [o.inner_text().strip().splitlines()[-1].strip()
             for o in page.get_by_role("option").all()]
    close(page, elem)
    return names


def close(page, elem: str) -> None:
    """Close an open dropdown and leave it (a focused dropdown does not open on a click)."""
    page.keyboard.press("Escape")
    page.locator(f"#{elem} input").first.blur()


def choose(page, elem: str, label: str) -> None:
    """Pick ``label`` in dropdown ``elem``: type to filter the list, Enter takes the match."""
    box = page.locator(f"#{elem} input").first
    box.blur()
    box.click()
    box.fill(label)
    page.get_by_role("option", name=label, exact=True).wait_for()
    box.press("Enter")
    page.wait_for_function(f"() => document.querySelector('#{elem} input').value === '{label}'")


def set_number(page, elem: str, number) -> None:
    """Type a number as a person does (and again if the field was still being drawn: a field
    of an accordion that just opened can be redrawn with its first value)."""
    box = page.locator(f"#{elem} input[type=number]").first
    for _ in range(5):
        box.fill(str(number))
        box.press("Tab")
        page.wait_for_timeout(300)
        if box.input_value() == str(number):
            return
    raise AssertionError(f"#{elem} does not keep the value {number}")


def text_of(page, elem: str) -> str:
    return page.locator(f"#{elem}").inner_text()


def download(page, link_selector: str, out: Path) -> Path:
    link = page.wait_for_selector(link_selector, timeout=120_000)
    with page.expect_download() as dl:
        link.click()
    dl.value.save_as(out)
    return out


def upload_process_edit_save(page, tmp_path: Path) -> str:
    """Step 1: returns the caption typed into the editor beside the second image."""
    src = tmp_path / "photos"
    src.mkdir()
    files = [dp.save(im, src / n) for n, im in list(dp.good_variants().items())[:3]]
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#ds-upload .file-preview tr, "
                           "#ds-upload table tbody tr').length >= 3", timeout=120_000)
    choose(page, "ds-detector", "haar")  # offline: no RetinaFace weights
    page.locator("#ds-process").click()
    page.locator("#ds-status").get_by_text("3 image(s) ready").wait_for(timeout=600_000)
    shot(page, "01-processed")

    page.locator("#ds-gallery img").nth(1).click()
    page.locator("#ds-one-title").get_by_text("image 2 of 3").wait_for()
    assert page.locator("#ds-one-image img").count() == 1
    caption = "a photo of TOK person, in a white spacesuit, smiling"
    page.locator("#ds-caption-edit textarea").fill(caption)
    page.locator("#ds-caption-apply").click()
    page.locator("#ds-edit-status").get_by_text("changed").wait_for()
    page.locator('#ds-captions [data-testid="cell-1-2"]').get_by_text("white spacesuit").wait_for()

    page.locator("#ds-name input, #ds-name textarea").first.fill(DATASET)
    page.locator("#ds-save").click()
    page.locator("#ds-save-status").get_by_text("Saved 3 image(s)").wait_for(timeout=120_000)
    assert page.locator("#ds-to-train").is_enabled()
    shot(page, "02-saved")
    return caption


def reopen_and_train_on_it(page, caption: str) -> None:
    """After a reload: the dataset is listed in both tabs; Open shows the saved caption; "Train
    on this dataset" opens Train with it picked."""
    page.get_by_role("tab", name="Train").click()
    assert f"{DATASET} (3 images)" in options(page, "train-dataset")
    page.get_by_role("tab", name="Dataset").click()
    assert DATASET in options(page, "ds-existing")
    choose(page, "ds-existing", DATASET)
    page.locator("#ds-open").click()
    page.locator("#ds-status").get_by_text("Opened").wait_for(timeout=60_000)
    page.locator('#ds-captions [data-testid="cell-1-2"]').get_by_text(caption).wait_for()
    page.locator("#ds-to-train").click()
    page.wait_for_function("() => (document.querySelector('#train-dataset input') || {}).value"
                           f" === '{DATASET} (3 images)'", timeout=60_000)


def simple_settings_and_start(page) -> None:
    """Step 2: the simple settings on top; Advanced only for the sampling cost."""
    set_number(page, "train-cfg-train-max-train-steps", STEPS)
    set_number(page, "train-cfg-data-resolution", 64)
    set_number(page, "train-cfg-checkpoints-every-n-steps", 4)
    set_number(page, "train-cfg-validation-every-n-steps", 4)
    wait_until(lambda: f"{STEPS} steps" in text_of(page, "train-estimate"), 60,
               "the estimate to follow the steps")
    page.locator("#train-advanced").get_by_text("Advanced settings").first.click()
    page.locator("#train-section-validation").get_by_text("Validation").first.click()
    set_number(page, "train-cfg-validation-steps", 2)
    set_number(page, "train-cfg-validation-num-images", 1)
    page.locator("#train-cfg-validation-at-end input").uncheck()
    likeness = page.locator("#train-cfg-validation-likeness input, "
                            "#train-cfg-validation-likeness textarea").first
    likeness.fill("false")
    likeness.press("Tab")
    shot(page, "03-train-settings")
    page.locator("#train-start").click()
    wait_until(lambda: "✅ Run" in text_of(page, "train-start-status"), 120, "the run to start",
               page)


def loss_points(page) -> int:
    """Points of the loss chart's lines (Vega draws each line as one SVG path)."""
    return page.evaluate("""() => {
        const paths = document.querySelectorAll('#train-loss svg .mark-line path');
        let n = 0;
        for (const p of paths) n += ((p.getAttribute('d') || '').match(/L/g) || []).length + 1;
        return paths.length ? n : 0; }""")


def watch_cancel_resume_compare(page, home: Path) -> Path:
    """Step 3. Returns the run folder."""
    job = wait_until(lambda: next((j for j in jobs(home) if j["pgid"]), None), 120,
                     "the job's process", page)
    run_dir = Path(job["run_dir"])
    # Freeze the trainer once it has a checkpoint and a sample, so that Cancel lands mid-run
    # however fast the machine is (the click's SIGTERM waits until SIGCONT, as in a long step).
    deadline = time.time() + 900
    while not {"checkpoint", "sample"} <= {e["type"] for e in step_events(run_dir)}:
        assert time.time() < deadline, "no checkpoint and sample within 900 s"
        assert not any(e["type"] == "end" for e in step_events(run_dir)), "ended too soon"
        time.sleep(0.02)
    os.killpg(job["pgid"], signal.SIGSTOP)
    try:
        wait_until(lambda: current_step(page) >= 4, 60, "steps in the live view", page)
        wait_until(lambda: loss_points(page) >= 4, 60, "points on the loss chart")
        wait_until(lambda: page.locator("#train-samples img").count() >= 1, 60, "samples", page)
        shot(page, "04-training")
        page.locator("#train-cancel").click()
        wait_until(lambda: "Stopping" in text_of(page, "train-action-status"), 60,
                   "the stop request")
    finally:
        os.killpg(job["pgid"], signal.SIGCONT)
    wait_until(lambda: "cancelled" in status_text(page), 300, "cancelled", page)
    assert page.locator("#train-resume").is_enabled()
    page.locator("#train-resume").click()
    wait_until(lambda: "Resumed" in text_of(page, "train-action-status"), 60, "resume")
    wait_until(lambda: "finished" in status_text(page), 1500, "the run to finish", page)
    assert f"step {STEPS} / {STEPS}" in status_text(page)
    starts = [e for e in step_events(run_dir) if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["step"] > 0  # resumed, not restarted
    wait_until(lambda: loss_points(page) >= STEPS, 60, "the whole loss curve")

    page.locator("#train-compare").get_by_text("Compare checkpoints").first.click()
    page.locator("#train-compare-button").click()
    n_ckpt = len(list((run_dir / "checkpoints").glob("checkpoint-*/COMPLETE")))
    assert n_ckpt >= 2
    wait_until(lambda: page.locator("#train-compare-grid img").count() >= n_ckpt, 900,
               "the comparison grid")
    shot(page, "05-finished-compared")
    return run_dir


def generate(page, prompt: str, seed: int, refiner: bool) -> None:
    page.locator("#gen-prompt textarea").fill(prompt)
    seed_box = page.locator("#gen-seed input").first
    seed_box.fill(str(seed))
    seed_box.press("Tab")
    box = page.locator("#gen-refiner input")
    box.check() if refiner else box.uncheck()
    before = text_of(page, "gen-status")
    page.locator("#gen-button").click()
    wait_until(lambda: "Done: 1 image(s)" in text_of(page, "gen-status")
               and text_of(page, "gen-status") != before, 900, "the image")


def newest_params(home: Path) -> dict:
    from studio.generate.gallery import read_params

    newest = max((home / "gallery").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return read_params(newest)


def use_in_generate_with_and_without_refiner(page, home: Path, run: str) -> None:
    """Step 4."""
    page.locator("#train-send").click()
    page.wait_for_function("() => (document.querySelector('#gen-lora input') || {}).value"
                           f" === '{run}'", timeout=120_000)
    assert "TOK person" in value(page, "gen-prompt")
    for elem, number in (("gen-width", 64), ("gen-height", 64), ("gen-steps", 2)):
        set_number(page, elem, number)
    generate(page, "a photo of TOK person, blue sky", 3, refiner=False)
    assert page.locator("#gen-gallery img").count() == 1
    assert newest_params(home)["lora"] and not newest_params(home)["refiner"]
    generate(page, "a photo of TOK person, red hat", 7, refiner=True)
    page.wait_for_function("document.querySelectorAll('#gen-gallery img').length >= 2",
                           timeout=60_000)
    params = newest_params(home)
    assert params["refiner"] and params["seed"] == 7 and params["lora"]
    shot(page, "06-generated")


def reuse_settings(page, run: str) -> None:
    """Step 5: change the fields, then reuse the refined image's settings (the newest image)."""
    page.locator("#gen-prompt textarea").fill("something else")
    page.locator("#gen-seed input").first.fill("99")
    page.locator("#gen-refiner input").uncheck()
    page.locator("#gen-gallery img").first.click()
    page.locator("#gen-meta").get_by_text("red hat").first.wait_for()
    page.locator("#gen-reuse").click()
    page.locator("#gen-gallery-status").get_by_text("filled in").wait_for()
    assert value(page, "gen-prompt") == "a photo of TOK person, red hat"
    assert value(page, "gen-seed") == "7"
    assert page.locator("#gen-refiner input").is_checked()
    assert value(page, "gen-lora") == run


def export_gallery(page, tmp_path: Path) -> None:
    """Step 6a."""
    page.locator("#gen-export").click()
    out = download(page, "#gen-export-file a[download], #gen-export-file a[href*='.zip']",
                   tmp_path / "gallery.zip")
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 2
        rows = zf.read("metadata.csv").decode()
        assert "blue sky" in rows and "red hat" in rows


def after_reload(page, run: str) -> None:
    """Step 7b: runs, LoRAs and the gallery are still there after a reload."""
    page.reload()
    page.get_by_role("tab", name="Train").click()
    wait_until(lambda: run in value(page, "train-runs"), 60, "the run after a reload", page)
    wait_until(lambda: "finished" in status_text(page), 60, "its state after a reload", page)
    assert any(run in o for o in options(page, "train-runs"))
    assert f"{DATASET} (3 images)" in options(page, "train-dataset")
    # The finished run measured this machine's speed: the estimate is a time now.
    wait_until(lambda: "of training" in text_of(page, "train-estimate"), 60,
               "a measured estimate")
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_function("document.querySelectorAll('#gen-gallery img').length === 2",
                           timeout=60_000)
    assert run in options(page, "gen-lora")


def download_bundle(page, tmp_path: Path, run: str) -> None:
    """Step 6b."""
    page.get_by_role("tab", name="Share").click()
    wait_until(lambda: value(page, "share-run") == run, 60, "the run in the Share tab")
    page.locator("#share-bundle").click()
    out = download(page, "#share-bundle-file a[href*='.zip'], #share-bundle-file a[download]",
                   tmp_path / "bundle.zip")
    with zipfile.ZipFile(out) as zf:
        assert any(n.endswith("pytorch_lora_weights.safetensors") for n in zf.namelist())
    shot(page, "07-share")


def delete_run_and_dataset(page, home: Path, run: str, run_dir: Path) -> None:
    """Step 8: two-step deletes; gone from every list."""
    page.get_by_role("tab", name="Train").click()
    assert run in value(page, "train-runs")
    page.locator("#train-delete").click()
    page.locator("#train-delete-status").get_by_text("cannot be undone").wait_for()
    assert run_dir.is_dir()
    page.locator("#train-delete-confirm").click()
    page.locator("#train-delete-status").get_by_text("Deleted run").wait_for(timeout=60_000)
    assert not run_dir.exists()
    page.locator("#train-runs input").first.click()
    assert not any(run in o for o in page.get_by_role("option").all_inner_texts())
    close(page, "train-runs")
    page.get_by_role("tab", name="Generate").click()
    wait_until(lambda: run not in options(page, "gen-lora"), 60, "the LoRA list without the run")
    page.get_by_role("tab", name="Share").click()
    wait_until(lambda: value(page, "share-run") != run, 60, "the Share list without the run")

    page.get_by_role("tab", name="Dataset").click()
    choose(page, "ds-existing", DATASET)
    page.locator("#ds-delete").click()
    page.locator("#ds-list-status").get_by_text("cannot be undone").wait_for()
    assert (home / "datasets" / DATASET).is_dir()
    page.locator("#ds-delete-confirm").click()
    page.locator("#ds-list-status").get_by_text(f"Deleted the dataset {DATASET}").wait_for(
        timeout=60_000)
    assert not (home / "datasets" / DATASET).exists()
    page.locator("#ds-existing input").first.click()
    assert page.get_by_role("option", name=DATASET, exact=True).count() == 0
    close(page, "ds-existing")
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-dataset input").first.click()
    assert not any(DATASET in o for o in page.get_by_role("option").all_inner_texts())
    close(page, "train-dataset")
    page.get_by_role("tab", name="Share").click()
    page.get_by_text("Push a dataset").first.click()
    page.locator("#share-dataset input").first.click()
    assert not any(DATASET in o for o in page.get_by_role("option").all_inner_texts())
    close(page, "share-dataset")
    shot(page, "08-deleted")


def test_a_new_users_journey_by_clicks_only(app_server, page, tmp_path):
    home = app_server.home
    page.set_default_timeout(120_000)
    page.goto(app_server.url)
    try:
        caption = upload_process_edit_save(page, tmp_path)
        page.reload()  # 7a: the saved dataset and its caption are still there
        reopen_and_train_on_it(page, caption)
        simple_settings_and_start(page)
        run_dir = watch_cancel_resume_compare(page, home)
        run = run_dir.name
        cfg = RunFolder(run_dir).config()  # what the simple mode and Advanced set
        assert (cfg.data.resolution, cfg.train.max_train_steps, cfg.validation.steps) == \
            (64, STEPS, 2)
        assert Path(cfg.data.dataset).name == DATASET
        use_in_generate_with_and_without_refiner(page, home, run)
        reuse_settings(page, run)
        export_gallery(page, tmp_path)
        after_reload(page, run)
        download_bundle(page, tmp_path, run)
        delete_run_and_dataset(page, home, run, run_dir)
    finally:
        kill_trainings(home)
