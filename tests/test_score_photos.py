"""`python -m studio score-photos`: a photo set checked for one person before training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dataset_photos as dp
from identity_support import FixedCaptioner

from studio.cli import main
from studio.dataset.faces import HaarDetector
from studio.dataset.pipeline import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]


def _folder(tmp_path, photos: dict) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name, im in photos.items():
        dp.save(im, folder / name)
    return folder


def test_folder_with_someone_else_names_the_photo(tmp_path, capsys):
    folder = _folder(tmp_path, {**dp.good_variants(), "grace_hopper.jpg": dp.grace_hopper(),
                                "two.png": dp.side_by_side(dp.grace_hopper(), dp.astronaut())})
    (folder / "notes.jpg").write_text("not a photo")
    assert main(["score-photos", str(folder)]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:8]}
    assert out.splitlines()[0].split() == ["photo", "faces", "distance", "verdict"]
    assert rows["grace_hopper.jpg"][1:4] == ["1", rows["grace_hopper.jpg"][2], "someone"]
    assert float(rows["grace_hopper.jpg"][2]) > 0.6
    for name in dp.good_variants():
        assert rows[name][1] == "1" and float(rows[name][2]) < 0.6 and "same" in rows[name]
    # The two-person photo counts the astronaut (the set's identity), not the larger face.
    assert rows["two.png"][1] == "2" and float(rows["two.png"][2]) < 0.6
    assert rows["notes.jpg"][3:5] == ["not", "used:"]
    assert ("warning: grace_hopper.jpg does not look like the same person as the other 5 photos"
            in out)


def test_prepared_dataset_of_one_person(tmp_path, capsys):
    folder = _folder(tmp_path, dp.good_variants())
    ds = prepare_dataset([folder], tmp_path / "ds", detector=HaarDetector(),
                         captioner=FixedCaptioner()).dataset
    assert main(["score-photos", str(ds.path)]) == 0
    out = capsys.readouterr().out
    assert "0001.png (" in out and out.count("same person") == 4
    assert out.rstrip().endswith("one person.")


def test_bad_input_is_one_sentence_and_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "studio", "score-photos", str(tmp_path / "nope")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} does not exist; give a folder of photos, a zip or a "
        "prepared dataset."]
