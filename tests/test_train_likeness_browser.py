"""Train tab in a real browser: a run whose images are real photos shows the likeness plot and
the proposed checkpoint, and "Use best checkpoint" makes it the run's LoRA."""

from __future__ import annotations

import dataset_photos as dp
import pytest
from _train_support import wait_for
from conftest import start_app
from likeness_support import astronauts, build_face_run, face_dataset, graces

pytestmark = pytest.mark.browser


class NoGenerator:
    def generate(self, req):
        raise AssertionError("nothing should be generated")


def test_train_tab_shows_likeness_and_the_proposed_checkpoint(home, tiny_models, page):
    from studio.identity.rescore import score_run

    a, g = astronauts(), graces()
    coffee = dp.no_face_photo()
    run = build_face_run(home / "runs" / "astro-run", face_dataset(home / "datasets" / "astro"), {
        100: (g[:2], g[2:]), 200: (a[2:], g[2:]), 300: (a[:2], a[2:]),
        400: ([coffee, coffee], g[:2])}, baseline=g[:2])
    score_run(run, NoGenerator())
    server = start_app(home, tiny_models)
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Train").click()
        best = page.locator("#train-best")
        wait_for(lambda: "checkpoint 200: likeness" in best.inner_text(), 60,
                 what="the proposed checkpoint", interval=0.5)
        text = best.inner_text()
        assert "checkpoint 300 is" in text and "but bleeds" in text
        assert "a photo of a person" in text
        plot = page.locator("#train-likeness")
        wait_for(lambda: plot.locator("canvas, svg").count() > 0, 30, what="the likeness plot",
                 interval=0.5)
        # The legend is drawn only with the lines (an empty first value leaves both out).
        wait_for(lambda: plot.get_by_text("bleed", exact=True).count() > 0, 30,
                 what="the plot's lines and legend", interval=0.5)
        page.locator("#train-use-best").click()
        status = page.locator("#train-best-status")
        wait_for(lambda: "Checkpoint 200 is now the run's LoRA" in status.inner_text(), 60,
                 what="use best checkpoint", interval=0.5)
        ck = run / "checkpoints" / "checkpoint-000200" / "pytorch_lora_weights.safetensors"
        assert (run / "pytorch_lora_weights.safetensors").read_bytes() == ck.read_bytes()
        page.screenshot(path=str(home.parent / "train-likeness.png"), full_page=True)
    finally:
        server.stop()
