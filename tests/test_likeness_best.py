"""Best checkpoint with the real face model: real photos stand in for a run's images.

Checkpoint 100's samples show Grace Hopper (not the subject), 200's the astronaut (the subject),
300's too and slightly closer, but its "a photo of a person" images are the astronaut as well
(identity bleed), 400's show no face. 200 wins; 300 is rejected for bleed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dataset_photos as dp
import pytest
from likeness_support import PERSON, astronauts, build_face_run, face_dataset, graces

from studio.identity.rescore import score_run
from studio.identity.runscore import LikenessError, use_best
from studio.identity.scores import NO_FACE


class NoGenerator:
    def generate(self, req):
        raise AssertionError(f"nothing should be generated (asked for {req.prompt!r})")


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_models) -> Path:
    root = tmp_path_factory.mktemp("best")
    ds = face_dataset(root / "astro")
    a, g, coffee = astronauts(), graces(), dp.no_face_photo()
    return build_face_run(root / "run", ds, {
        100: (g[:2], g[2:]), 200: (a[2:], g[2:]), 300: (a[:2], a[2:]),
        400: ([coffee, coffee], g[:2])}, baseline=g[:2], base=tiny_models["base"])


@pytest.fixture()
def run(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


@pytest.fixture(scope="module")
def scored(template, tmp_path_factory):
    run = Path(shutil.copytree(template, tmp_path_factory.mktemp("scored") / "run"))
    return run, score_run(run, NoGenerator())


def test_the_subject_wins_and_the_bleeding_checkpoint_is_rejected(scored):
    run, result = scored
    rows = {r.step: r for r in result.rows}
    assert rows[100].likeness < 0.4 < rows[200].likeness  # another person / the subject
    assert rows[300].likeness > rows[200].likeness and rows[300].bleed > 0.2
    assert abs(rows[200].bleed) < 0.1 and rows[200].baseline < 0.4
    assert rows[400].likeness is None and rows[400].faces == 0
    assert result.proposal.step == 200
    r2, r3 = rows[200], rows[300]
    assert result.proposal.reason == (
        f"checkpoint 200: likeness {r2.likeness:.2f} (best), bleed {r2.bleed:.2f}; checkpoint 300 "
        f"is {r3.likeness:.2f} but bleeds {r3.bleed:.2f} into '{PERSON}'.")
    saved = json.loads((run / "likeness.json").read_text())
    assert saved["proposed"] == 200 and [r["step"] for r in saved["checkpoints"]] == [
        100, 200, 300, 400]
    assert json.loads((run / "manifest.json").read_text())["likeness"]["proposed"] == 200
    assert json.loads((run / "identity.json").read_text())["faces"] == 4


def test_use_best_exports_the_proposal_and_the_cards_say_why(scored, tmp_path):
    from studio.share.card import build_card
    from studio.share.runfiles import collect_run_files

    run = Path(shutil.copytree(scored[0], tmp_path / "run"))
    step, reason = use_best(run)
    assert step == 200 and reason.startswith("checkpoint 200:")
    ck = run / "checkpoints" / "checkpoint-000200" / "pytorch_lora_weights.safetensors"
    assert (run / "pytorch_lora_weights.safetensors").read_bytes() == ck.read_bytes()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["selected_checkpoint"] == 200 and manifest["likeness"]["proposed"] == 200
    card = (run / "README.md").read_text()
    row = next(r for r in manifest["likeness"]["checkpoints"] if r["step"] == 200)
    assert f"| 200 | {row['likeness']:.2f} | 2/2 | {row['bleed']:.2f} |" in card
    assert f"Best checkpoint of the run: {reason}" in card
    hub = build_card(collect_run_files(run, 400), "me/astro")  # a pushed checkpoint: its row
    assert hub.count("## Likeness") == 1
    assert f"| 400 | {NO_FACE} | 0/2 | " in hub and "dlib" in hub
    assert "| 200 |" not in hub


def test_no_proposal_when_every_checkpoint_bleeds(run):
    result = score_run(run, NoGenerator(), max_bleed=-0.5)
    assert result.proposal.step is None and "every checkpoint bleeds" in result.proposal.reason
    with pytest.raises(LikenessError, match="every checkpoint bleeds"):
        use_best(run, max_bleed=-0.5)


def test_missing_images_are_generated_once_through_the_comparison(run):
    from PIL import Image

    class PhotoGenerator:
        def __init__(self):
            self.requests = []

        def generate(self, req):
            from types import SimpleNamespace

            self.requests.append(req)
            photo = astronauts()[0] if req.lora else graces()[0]
            return [SimpleNamespace(image=photo.resize((req.width, req.height)),
                                    params={"prompt": req.prompt})]

    shutil.rmtree(run / "bleed")
    shutil.rmtree(run / "samples" / "step-000300")
    gen = PhotoGenerator()
    result = score_run(run, gen, steps=[300])
    kinds = sorted((r.prompt, r.lora is not None) for r in gen.requests)
    assert kinds == sorted([(PERSON, False)] * 2 + [(PERSON, True)] * 2 + [
        ("a photo of TOK person", True)] * 2)
    assert {r.step: r for r in result.rows}[300].bleed > 0.2  # the astronaut in "a person"
    assert Image.open(next((run / "compare").glob("base-*.png"))).size == (512, 512)
    score_run(run, gen, steps=[300])
    assert len(gen.requests) == 6  # cached


def test_cli_prints_the_table_and_writes_likeness_json(run, capsys):
    from studio.cli import main

    assert main(["score", str(run), "--checkpoint", "200", "300"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["step", "likeness", "faces", "found", "bleed", "chosen"]
    assert [ln.split()[0] for ln in out[1:3]] == ["200", "300"] and out[1].endswith("*")
    assert out[4].startswith("Best checkpoint: checkpoint 200: likeness")
    assert (run / "likeness.json").is_file()
    assert main(["score", str(run), "--checkpoint", "250"]) == 2
    assert "no complete checkpoint at step 250" in capsys.readouterr().err


def test_training_photos_without_a_face_are_one_sentence(run):
    from studio.identity.subject import Subject, save_subject
    from studio.runs.folder import RunError, RunFolder

    save_subject(RunFolder(run), Subject(None, 0, 4, "dlib"))
    with pytest.raises(RunError, match="show no face the identity model can embed, so there"):
        score_run(run, NoGenerator())
