"""The Share tab in a real browser: push a run to the (stand-in) Hub with a typed token, then
download the bundle. The token never appears on the page, in the log or in the workspace."""

from __future__ import annotations

import zipfile

import pytest
from conftest import start_app
from hub_standin import HubStandIn
from share_fixtures import build_run

pytestmark = pytest.mark.browser

TOKEN = "hf_browserSecretToken0123456789abcd"


def test_share_tab_pushes_with_a_session_token_and_bundles(home, tiny_models, page, tmp_path):
    hub = HubStandIn()
    hub.add_token(TOKEN, "alice")
    build_run(home / "runs" / "me", tiny_models["base"])
    app = start_app(home, tiny_models, env={"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
                                            "HF_TOKEN": ""})
    try:
        page.goto(app.url)
        page.get_by_role("tab", name="Share").click()
        page.locator("#share-repo input, #share-repo textarea").first.fill("alice/me-lora")
        token_box = page.locator("#share-token input").first
        assert token_box.get_attribute("type") == "password"
        token_box.fill(TOKEN)
        page.locator("#share-push").click()
        page.wait_for_function(
            "() => (document.querySelector('#share-url input, #share-url textarea') || {}).value"
            "?.includes('alice/me-lora')", timeout=120_000)
        repo = hub.repo("alice/me-lora")
        assert repo is not None and repo.private
        assert {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors",
                "README.md"} <= set(repo.files)
        assert token_box.input_value() == ""  # cleared, kept only in the session state
        assert "kept for this browser session" in page.locator("#share-token-note").inner_text()

        assert "Created" in page.locator("#share-status").inner_text()
        # Re-push with the session's token (the field stays empty; HF_TOKEN is unset): the repo
        # is updated, not refused for a missing token.
        page.locator("#share-push").click()
        page.locator("#share-status").get_by_text("Updated").wait_for(timeout=120_000)
        assert hub.repo("alice/me-lora").private

        page.locator("#share-bundle").click()
        link = page.wait_for_selector("#share-bundle-file a[href*='.zip'], "
                                      "#share-bundle-file a[download]", timeout=60_000)
        with page.expect_download() as dl:
            link.click()
        out = tmp_path / "bundle.zip"
        dl.value.save_as(out)
        with zipfile.ZipFile(out) as zf:
            assert any(n.endswith("pytorch_lora_weights.safetensors") for n in zf.namelist())

        assert TOKEN not in page.content()
    finally:
        app.stop()
        hub.stop()
    assert TOKEN not in app.log.read_text()
    for f in home.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            assert TOKEN.encode() not in f.read_bytes(), f
