"""The Dataset tab in a real browser: upload, process, edit a caption, save, check the disk."""

from __future__ import annotations

import json

import dataset_photos as dp
import pytest
from PIL import Image

from studio.dataset import store
from studio.fsutil import read_jsonl


@pytest.mark.browser
def test_upload_process_edit_save(app_server, page, tmp_path):
    src = tmp_path / "upload"
    src.mkdir()
    files = []
    for name, im in list(dp.good_variants().items())[:3]:
        files.append(dp.save(im, src / name))
    bad = src / "notes.jpg"
    bad.write_text("not a photo")
    files.append(bad)

    page.goto(app_server.url)
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#ds-upload .file-preview tr, "
                           "#ds-upload table tbody tr').length >= 4", timeout=60_000)
    page.locator("#ds-detector input").fill("haar")
    page.keyboard.press("Enter")
    page.locator("#ds-process").click()
    status = page.locator("#ds-status")
    status.get_by_text("not used").wait_for(timeout=240_000)
    assert "3 image(s) ready, 1 not used" in status.inner_text()
    # Crops next to originals, captions from the tiny BLIP, the rejected file in the report.
    page.locator("#ds-gallery img").first.wait_for()
    assert page.locator("#ds-gallery img").count() >= 3
    assert "notes.jpg" in page.locator("#ds-report").inner_text()
    table_text = page.locator("#ds-captions").inner_text()
    assert table_text.count("a photo of TOK person") >= 3

    # Edit the second caption in the table itself.
    cell = page.locator('#ds-captions [data-testid="cell-1-2"]')
    cell.dblclick()
    editor = cell.locator("textarea").first
    editor.fill("a photo of TOK person, wearing a spacesuit, edited in the browser")
    editor.press("Enter")
    page.locator('#ds-captions [data-testid="cell-1-2"]').get_by_text(
        "edited in the browser").wait_for()

    page.locator("#ds-name input, #ds-name textarea").first.fill("browser-set")
    page.locator("#ds-save").click()
    page.locator("#ds-save-status").get_by_text("Saved 3 image(s)").wait_for(timeout=60_000)

    folder = app_server.home / "datasets" / "browser-set"
    rows = read_jsonl(folder / "images" / "metadata.jsonl")
    assert len(rows) == 3
    assert rows[1]["text"] == "a photo of TOK person, wearing a spacesuit, edited in the browser"
    assert all(r["text"].startswith("a photo of TOK person") for r in rows)
    info = json.loads((folder / "dataset.json").read_text())
    assert info["hash"] == store.dataset_hash(folder) and info["name"] == "browser-set"
    for r in rows:
        with Image.open(folder / "images" / r["file_name"]) as im:
            assert im.size == (1024, 1024)
    assert not list((app_server.home / "tmp" / "staging").iterdir())  # staged copy moved

    # Re-opening the app lists the dataset.
    page.reload()
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-existing input").click()
    page.get_by_role("option", name="browser-set").wait_for(timeout=30_000)
    page.get_by_role("option", name="browser-set").click()
    page.locator("#ds-open").click()
    page.locator("#ds-captions").get_by_text("edited in the browser").wait_for()
