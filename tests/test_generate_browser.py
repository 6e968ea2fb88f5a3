"""The Generate tab in a real browser: generate, see the image, export the gallery, the
operator's models shown read-only, a bad operator-given base path."""

from __future__ import annotations

import zipfile

import pytest
from api_support import request
from conftest import start_app

pytestmark = pytest.mark.browser


def _generate(page, prompt: str, seed: str = "3") -> None:
    page.fill("#gen-prompt textarea", prompt)
    page.fill("#gen-seed input", seed)
    page.click("#gen-button")


def test_generate_gallery_export_and_bad_base(app_server, page, tiny_models, tmp_path):
    page.goto(app_server.url)
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_selector("#gen-button")
    # Tiny model: small and quick.
    for sel, val in (("#gen-width input[type=number]", "64"), ("#gen-height input[type=number]", "64"),
                     ("#gen-steps input[type=number]", "2")):
        page.fill(sel, val)
        page.press(sel, "Enter")
    _generate(page, "a photo of TOK person")
    page.wait_for_selector("#gen-status :text('Done: 1 image(s)')", timeout=120_000)
    page.wait_for_selector("#gen-gallery img")
    pngs = list((app_server.home / "gallery").glob("*.png"))
    assert len(pngs) == 1

    # Export: the zip downloads and holds the image and its metadata row.
    page.click("#gen-export")
    link = page.wait_for_selector("#gen-export-file a[download], #gen-export-file a[href*='.zip']")
    with page.expect_download() as dl:
        link.click()
    out = tmp_path / "export.zip"
    dl.value.save_as(out)
    with zipfile.ZipFile(out) as zf:
        assert f"images/{pngs[0].name}" in zf.namelist()
        assert "a photo of TOK person" in zf.read("metadata.csv").decode()

    # The models are the operator's: shown, not editable.
    page.click("text=Models")
    base = page.locator("#gen-base textarea, #gen-base input").first
    assert base.input_value() == str(tiny_models["base"])
    assert not base.is_editable()
    assert app_server.proc.poll() is None


def test_operator_bad_base_is_one_sentence_and_the_app_keeps_running(home, tiny_models, page,
                                                                     tmp_path):
    """A base model path that does not exist (given by the operator): one sentence in the UI,
    and the app keeps running."""
    home.mkdir(parents=True, exist_ok=True)
    missing = tmp_path / "no-such-model"
    server = start_app(home, {**tiny_models, "base": missing})
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Generate").click()
        page.wait_for_selector("#gen-button")
        _generate(page, "a photo of TOK person", "4")
        status = page.wait_for_selector("#gen-status :text('does not exist')", timeout=120_000)
        assert "no-such-model" in status.inner_text()
        assert "Traceback" not in page.content()
        assert len(status.inner_text().strip().splitlines()) == 1
        assert server.proc.poll() is None and request(server.url + "/health")[0] == 200
        assert not list((home / "gallery").glob("*.png"))
    finally:
        server.stop()
