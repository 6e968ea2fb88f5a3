"""Likeness during training on the tiny models: a dataset of real photos of one person gives the
run a subject, the tiny model's images have no faces, and the run still finishes and says
"no face found in the samples" (never a score of 0)."""

from __future__ import annotations

import json
from pathlib import Path

import dataset_photos as dp
import pytest
from _train_support import fast_overrides

from studio.config import load_config
from studio.identity.scores import NO_FACE
from studio.runs.folder import RunFolder


def face_dataset(out: Path) -> Path:
    """A prepared dataset of four astronaut photos (crops, mirror, tilt), 512 px."""
    (out / "images").mkdir(parents=True)
    (out / "originals").mkdir()
    lines = []
    for i, im in enumerate(dp.good_variants().values()):
        im.convert("RGB").resize((512, 512)).save(out / "images" / f"{i:04d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": "a photo of tok person"}))
    (out / "images" / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    (out / "dataset.json").write_text(json.dumps({
        "name": "astro", "trigger": "tok", "class_word": "person", "template": "a photo of {}",
        "hash": "astro-4", "created": "2026-01-01T00:00:00Z", "count": 4, "framing": "face"}))
    return out


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    from studio.train.loop import train

    root = tmp_path_factory.mktemp("likeness")
    ds = face_dataset(root / "astro")
    run = root / "run"
    cfg = load_config(overrides=fast_overrides(run, ds, tiny_models["base"], steps=3) +
                      ["checkpoints.every_n_steps=2", "checkpoints.total_limit=null"])
    result = train(cfg)
    assert result.status == "finished"
    return RunFolder(run)


def test_tiny_run_finishes_and_reports_no_face(finished_run):
    run = finished_run
    ev = run.events()
    scores = [e for e in ev if e["type"] == "likeness"]
    assert [e["step"] for e in scores] == [2, 3]  # every checkpoint, the final one included
    for e in scores:
        assert e["likeness"] is None and e["faces"] == 0 and e["images"] == 1
        assert e["message"] == NO_FACE
        assert e["bleed_prompts"] == ["a photo of a person"]
    assert ev[-1]["type"] == "end" and ev[-1]["status"] == "finished"
    logs = [e["message"] for e in ev if e["type"] == "log"]
    assert f"Best checkpoint: No proposal: {NO_FACE} of any checkpoint." in logs
    assert (run.path / "bleed" / "base" / "0.png").is_file()
    assert (run.path / "bleed" / "step-000002" / "0.png").is_file()
    assert not list((run.path / "samples").glob("*/bleed*"))
    manifest = run.manifest()
    assert manifest["likeness"]["proposed"] is None
    assert [r["step"] for r in manifest["likeness"]["checkpoints"]] == [2, 3]
    card = run.card_path.read_text()
    assert "## Likeness" in card and f"| 3 | {NO_FACE} | 0/1 | - |" in card
    subject = json.loads(run.identity_path.read_text())
    assert subject["faces"] == 4 and len(subject["vector"]) == 128


def test_likeness_off_when_the_photos_show_no_face(tiny_models, tmp_path):
    from _train_support import make_dataset

    from studio.train.loop import train

    ds = make_dataset(tmp_path / "ds")  # astronaut, coffee, cat, rocket at 96 px: < 3 faces
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", ds, tiny_models["base"]) +
                      ["validation.every_n_steps=1"])
    assert train(cfg).status == "finished"
    run = RunFolder(tmp_path / "run")
    assert not [e for e in run.events() if e["type"] == "likeness"]
    assert not (run.path / "bleed").exists()


def test_score_command_reuses_the_runs_images_and_says_no_face(finished_run, capsys):
    from studio.cli import main

    assert main(["score", str(finished_run.path)]) == 0  # every image is there: none generated
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in out[1:3]] == ["2", "3"]
    assert all(NO_FACE in ln and "0/1" in ln for ln in out[1:3])
    assert f"Best checkpoint: No proposal: {NO_FACE} of any checkpoint." in out
    assert not (finished_run.path / "compare").exists()
