"""The Dataset tab in a real browser names the photo of someone else and shows distances."""

from __future__ import annotations

import re

import dataset_photos as dp
import pytest


@pytest.mark.browser
def test_dataset_tab_shows_the_outlier_warning(app_server, page, tmp_path):
    src = tmp_path / "upload"
    src.mkdir()
    photos = {**dp.good_variants(), "grace_hopper.jpg": dp.grace_hopper()}
    files = [dp.save(im, src / name) for name, im in photos.items()]

    page.goto(app_server.url)
    page.get_by_role("tab", name="Dataset").click()
    page.locator("#ds-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('#ds-upload .file-preview tr, "
                           "#ds-upload table tbody tr').length >= 5", timeout=60_000)
    page.locator("#ds-detector input").fill("haar")
    page.keyboard.press("Enter")
    page.locator("#ds-process").click()
    page.locator("#ds-status").get_by_text("image(s) ready").wait_for(timeout=240_000)
    report = page.locator("#ds-report")
    report.get_by_text("does not look like the same person").first.wait_for()
    text = report.inner_text()
    assert re.search(r"\d{4}\.png \(grace_hopper\.jpg\) does not look like the same person as "
                     r"the other 4 photos \(distance 0\.\d\d; same person is below 0\.6\): drop "
                     r"it or check it\.", text), text
    # The per-photo table: every photo with its distance; only Grace Hopper is someone else.
    rows = report.locator("table tbody tr")
    assert rows.count() == 5
    cells = [rows.nth(i).inner_text().split("\t") for i in range(5)]
    by_source = {c[1].strip(): c for c in cells}
    assert "someone else" in by_source["grace_hopper.jpg"][4]
    assert float(by_source["grace_hopper.jpg"][3]) > 0.6
    for name in dp.good_variants():
        assert float(by_source[name][3]) < 0.6 and "same person" in by_source[name][4]
