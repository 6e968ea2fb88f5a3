"""The Train tab's likeness view without a browser: plot data, the proposal, Use best
checkpoint and each compared image's score, over a run whose images are real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import dataset_photos as dp
import pytest
from likeness_support import astronauts, build_face_run, face_dataset, graces

from studio.identity.rescore import score_run
from studio.identity.scores import NO_FACE, StepScore
from studio.ui import train_likeness as TL


class NoGenerator:
    def generate(self, req):
        raise AssertionError("nothing should be generated")


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ui")
    a, g = astronauts(), graces()
    coffee = dp.no_face_photo()
    run = build_face_run(root / "run", face_dataset(root / "astro"), {
        2: (g[:2], g[2:]), 4: (a[2:], g[2:]), 6: ([coffee, coffee], g[:2])}, baseline=g[:2])
    score_run(run, NoGenerator())
    return run


def test_frame_has_no_point_for_a_step_without_faces():
    rows = [StepScore(2, 0.5, 2, 2, 0.1), StepScore(4, None, 0, 2, None)]
    df = TL.likeness_frame(rows)
    assert df.to_dict("records") == [{"step": 2, "score": 0.5, "series": "likeness"},
                                     {"step": 2, "score": 0.1, "series": "bleed"}]


def test_proposal_plot_and_use_best(scored, tmp_path):
    run = Path(shutil.copytree(scored, tmp_path / "run"))
    plot, text, seen, use, score = TL.tick(str(run), None)
    assert use["interactive"] and score["interactive"]  # a proposal, checkpoints to score
    assert text.startswith("**Best checkpoint:** checkpoint 4: likeness")
    assert f"Latest: step 6: {NO_FACE} (0/2 images)" in text
    likeness = plot[plot["series"] == "likeness"]
    assert list(likeness["step"]) == [2, 4]  # step 6's samples have no face: no point
    again = TL.tick(str(run), seen)
    assert again[0]["__type__"] == "update" and again[1]["__type__"] == "update"  # skipped
    msg = TL.on_use_best(str(run))
    assert msg.startswith("✅ Checkpoint 4 is now the run's LoRA (checkpoint 4: likeness")
    ck = run / "checkpoints" / "checkpoint-000004" / "pytorch_lora_weights.safetensors"
    assert (run / "pytorch_lora_weights.safetensors").read_bytes() == ck.read_bytes()
    assert TL.on_use_best(None) == "⚠️ Pick a run first."


def test_a_run_without_scores_says_how_to_get_them(tmp_path):
    from share_fixtures import build_run

    run = build_run(tmp_path / "plain", "base")
    _, text, _, use, _ = TL.tick(str(run), None)
    assert text == TL.NOT_MEASURED
    assert use["interactive"] is False  # nothing proposed: Use best checkpoint is disabled
    assert all(u["interactive"] is False for u in TL.tick(None, None)[3:])
    assert TL.on_use_best(str(run)) == "⚠️ No checkpoint has been scored yet."
    assert TL.cell_scores(run, [run / "samples" / "step-000002" / "0.png"]) == {}


def test_compared_images_carry_their_score(scored):
    from studio.train.compare import compare_grid, compare_settings

    rows = compare_grid(scored, NoGenerator(), compare_settings(scored))
    labels = TL.cell_scores(scored, [c.path for r in rows for c in r])
    by_step = {c.step: labels[c.path] for r in rows for c in r}
    assert by_step[6] == " · no face"
    assert float(by_step[4].split()[-1]) > 0.4 > float(by_step[2].split()[-1])
