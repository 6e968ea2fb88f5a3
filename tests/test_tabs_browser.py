"""The Dataset, Generate and Share tabs in a real browser, by clicks and choices only: lists
filled on page load and when a tab opens, the caption editor beside the image in sync with the
table, Train on this dataset, reusing an image's settings, deleting with a confirmation."""

from __future__ import annotations

import dataset_photos as dp
import pytest
from PIL import Image
from share_fixtures import build_run

from studio.generate.gallery import Gallery

pytestmark = pytest.mark.browser


def _value(page, elem: str) -> str:
    return page.locator(f"#{elem} textarea, #{elem} input").first.input_value()


def _options(page, elem: str) -> list[str]:
    page.locator(f"#{elem} input").first.click()
    page.get_by_role("option").first.wait_for()
    # (the chosen option carries a check mark on a line of its own)
    names = [o.inner_text().strip().splitlines()[-1].strip()
             for o in page.get_by_role("option").all()]
    page.keyboard.press("Escape")
    return names


def test_generate_and_share_lists_reuse_and_delete(app_server, page, tiny_models):
    home = app_server.home
    build_run(home / "runs" / "me", tiny_models["base"])  # made after the app started
    params = {"prompt": "a photo of TOK person, red hat", "negative_prompt": "blurry",
              "seed": 41, "steps": 3, "guidance": 4.5, "width": 64, "height": 72,
              "scheduler": "Euler a", "lora": None, "refiner": None}
    image = Gallery(home / "gallery").add(Image.new("RGB", (64, 72), (200, 30, 30)), params)

    page.goto(app_server.url)
    page.get_by_role("tab", name="Generate").click()
    # Page load: the gallery and the LoRA list come from the disk, not from the app's start.
    page.locator("#gen-gallery img").first.wait_for()
    assert "me" in _options(page, "gen-lora")

    # A run that appears while the page is open is listed when the tab is opened again.
    build_run(home / "runs" / "later", tiny_models["base"])
    page.get_by_role("tab", name="Share").click()
    assert _value(page, "share-run") in ("me", "later")
    page.locator("#share-push").click()
    page.locator("#share-status").get_by_text(
        "Enter a Hub repo id such as your-name/my-lora.").wait_for()
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_function("() => true")
    assert {"me", "later"} <= set(_options(page, "gen-lora"))

    # Reuse this image's settings.
    page.locator("#gen-gallery img").first.click()
    page.locator("#gen-meta").get_by_text("red hat").first.wait_for()
    page.locator("#gen-reuse").click()
    page.locator("#gen-gallery-status").get_by_text("filled in").wait_for()
    assert _value(page, "gen-prompt") == "a photo of TOK person, red hat"
    assert _value(page, "gen-negative") == "blurry" and _value(page, "gen-seed") == "41"
    assert _value(page, "gen-scheduler") == "Euler a"
    assert page.locator("#gen-height input[type=number]").input_value() == "72"

    # A typo in the LoRA field names the runs there are.
    lora = page.locator("#gen-lora input").first
    lora.fill("no-such-run")
    lora.press("Enter")
    page.locator("#gen-button").click()
    status = page.locator("#gen-status").get_by_text("No trained run is named")
    status.wait_for(timeout=120_000)
    assert "me" in status.inner_text() and "download" not in status.inner_text()

    # Delete: "Delete…" asks, "Keep" keeps, "Confirm delete" deletes.
    page.locator("#gen-delete").click()
    page.locator("#gen-gallery-status").get_by_text("This cannot be undone").wait_for()
    page.locator("#gen-delete-keep").click()
    page.locator("#gen-gallery-status").get_by_text("Nothing was deleted").wait_for()
    assert image.exists() and not page.locator("#gen-delete-confirm").is_visible()
    page.locator("#gen-delete").click()
    page.locator("#gen-delete-confirm").click()
    page.locator("#gen-gallery-status").get_by_text("Deleted 1 image(s)").wait_for()
    assert not image.exists()
    assert page.locator("#gen-gallery img").count() == 0


def _process(page, tmp_path) -> None:
    src = tmp_path / "upload"
    src.mkdir()
    files = [dp.save(im, src / n) for n, im in list(dp.good_variants().items())[:3]]
    page.locator("#ds-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#ds-upload .file-preview tr, "
                           "#ds-upload table tbody tr').length >= 3", timeout=60_000)
    page.locator("#ds-detector input").fill("haar")
    page.keyboard.press("Enter")
    page.locator("#ds-process").click()
    page.locator("#ds-status").get_by_text("ready").wait_for(timeout=240_000)


def _cell(page, row: int, col: int = 2):
    return page.locator(f'#ds-captions [data-testid="cell-{row}-{col}"]')


def test_caption_editor_beside_the_image_stays_in_sync_and_train_on_this_dataset(
        app_server, page, tmp_path):
    page.goto(app_server.url)
    page.get_by_role("tab", name="Dataset").click()
    assert not page.locator("#ds-to-train").is_enabled()
    _process(page, tmp_path)

    # Clicking the second image shows it with its caption beside it.
    page.locator("#ds-gallery img").nth(1).click()
    page.locator("#ds-one-title").get_by_text("image 2 of 3").wait_for()
    box = page.locator("#ds-caption-edit textarea")
    assert box.input_value() == _cell(page, 1).inner_text().strip()
    assert page.locator("#ds-one-image img").count() == 1

    # A caption typed into the table: the editor shows it (no stale caption to Apply).
    _cell(page, 1).dblclick()
    editor = _cell(page, 1).locator("textarea").first
    editor.fill("a photo of TOK person, in a spacesuit")
    editor.press("Enter")
    page.wait_for_function("() => document.querySelector('#ds-caption-edit textarea').value"
                           ".includes('spacesuit')")
    page.locator("#ds-caption-apply").click()
    page.locator("#ds-edit-status").get_by_text("unchanged").wait_for()
    assert "spacesuit" in _cell(page, 1).inner_text()

    # Editing in the box, then Next: the edit is applied, the next image is shown.
    box.fill("a photo of TOK person, in a spacesuit, smiling")
    page.locator("#ds-caption-next").click()
    page.locator("#ds-one-title").get_by_text("image 3 of 3").wait_for()
    _cell(page, 1).get_by_text("smiling").wait_for()
    page.locator("#ds-edit-status").get_by_text("Applied the caption of 0002.png").wait_for()
    # Selecting another image (here by its row): the message about 0002.png gives way.
    _cell(page, 0, 0).click()
    page.locator("#ds-one-title").get_by_text("image 1 of 3").wait_for()
    page.wait_for_function("() => !document.querySelector('#ds-edit-status').innerText"
                           ".includes('0002.png')")
    page.locator("#ds-caption-next").click()
    page.locator("#ds-one-title").get_by_text("image 2 of 3").wait_for()
    page.locator("#ds-caption-next").click()
    page.locator("#ds-one-title").get_by_text("image 3 of 3").wait_for()
    assert box.input_value() == _cell(page, 2).inner_text().strip()

    # Replace-all counts the captions it changed (one of three).
    page.locator("#ds-find input, #ds-find textarea").first.fill("spacesuit")
    page.locator("#ds-replace input, #ds-replace textarea").first.fill("red hat")
    page.locator("#ds-replace-btn").click()
    page.locator("#ds-edit-status").get_by_text("Edited 1 caption(s) of 3").wait_for()

    # Save, then Train on this dataset opens the Train tab with the dataset chosen.
    page.locator("#ds-name input, #ds-name textarea").first.fill("sync-set")
    page.locator("#ds-save").click()
    page.locator("#ds-save-status").get_by_text("Saved 3 image(s)").wait_for(timeout=60_000)
    assert page.locator("#ds-to-train").is_enabled()
    page.locator("#ds-to-train").click()
    page.locator("#train-dataset").wait_for()
    page.wait_for_function("() => (document.querySelector('#train-dataset input') || {}).value"
                           "?.startsWith('sync-set')")

    # Delete it: asked first, then gone from the disk and from the list.
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-existing input").click()
    page.get_by_role("option", name="sync-set").click()
    page.locator("#ds-delete").click()
    page.locator("#ds-list-status").get_by_text("cannot be undone").wait_for()
    assert (app_server.home / "datasets" / "sync-set").is_dir()
    page.locator("#ds-delete-confirm").click()
    page.locator("#ds-list-status").get_by_text("Deleted the dataset sync-set").wait_for()
    assert not (app_server.home / "datasets" / "sync-set").exists()
    assert not page.locator("#ds-to-train").is_enabled()
    page.locator("#ds-existing input").click()
    assert page.get_by_role("option", name="sync-set").count() == 0


def test_use_this_lora_lists_a_run_that_finished_after_the_page_loaded(app_server, page,
                                                                       tiny_models):
    page.goto(app_server.url)
    page.get_by_role("tab", name="Generate").click()
    assert "fresh" not in _options(page, "gen-lora")
    build_run(app_server.home / "runs" / "fresh", tiny_models["base"])  # finishes meanwhile
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("() => (document.querySelector('#train-runs input') || {}).value"
                           "?.includes('fresh')", timeout=60_000)
    page.locator("#train-send").click()
    # The Generate tab opens with the run chosen, shown by its name (the list was read again).
    page.wait_for_function("() => (document.querySelector('#gen-lora input') || {}).value"
                           " === 'fresh'", timeout=60_000)
    assert "fresh" in _options(page, "gen-lora")
