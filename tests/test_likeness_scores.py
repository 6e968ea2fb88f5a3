"""Likeness arithmetic and the best-checkpoint rule with fake embeddings (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from studio.identity import scores as S
from studio.identity.engine import FaceEmbedding


class FakeEngine:
    """Embeds an "image" that is a vector; an all-zero image has no face."""

    name = "fake"

    def embed(self, rgb):
        v = np.asarray(rgb, np.float32).ravel()
        return [] if not v.any() else [FaceEmbedding((0, 0, 1, 1), v)]


SUBJECT = np.zeros(128, np.float32)
SUBJECT[0] = 1.0


def at(d: float) -> np.ndarray:
    """A vector at distance ``d`` from the subject."""
    v = SUBJECT.copy()
    v[1] = d
    return v


def test_likeness_is_one_minus_distance_over_faces_found():
    eng = FakeEngine()
    imgs = [S.score_image(eng, at(0.2), SUBJECT), S.score_image(eng, at(0.4), SUBJECT),
            S.score_image(eng, np.zeros(128), SUBJECT)]
    assert [i.likeness for i in imgs] == [pytest.approx(0.8), pytest.approx(0.6), None]
    assert [i.label() for i in imgs] == ["likeness 0.80", "likeness 0.60", "no face"]
    row = S.step_score(10, imgs, [S.ImageScore(0.5)], [S.ImageScore(0.2), S.ImageScore(None)],
                       ("a photo of a person",))
    assert (row.likeness, row.faces, row.images) == (pytest.approx(0.7), 2, 3)
    assert row.bleed == pytest.approx(0.3) and row.baseline == pytest.approx(0.2)
    assert S.StepScore.from_event(row.to_event()) == row


def test_no_face_is_a_message_never_a_zero():
    row = S.step_score(5, [S.ImageScore(None)] * 2, [S.ImageScore(None)], [S.ImageScore(None)])
    assert row.likeness is None and row.bleed is None and row.faces == 0
    assert row.to_event()["message"] == S.NO_FACE
    p = S.choose_best([row], [5])
    assert p.step is None and p.reason == f"No proposal: {S.NO_FACE} of any checkpoint."
    assert S.table_rows([row], None) == [["5", S.NO_FACE, "0/2", "-", ""]]


def _row(step, lk, bleed, faces=2):
    return S.StepScore(step, lk, faces, 2, bleed, None, None, ("a photo of a person",))


def test_best_is_the_highest_likeness_that_does_not_bleed():
    rows = [_row(100, 0.60, 0.01), _row(300, 0.78, 0.05), _row(500, 0.80, 0.31),
            _row(400, 0.79, 0.25), _row(600, 0.95, 0.0)]
    p = S.choose_best(rows, [100, 300, 400, 500])  # 600 was scored but its checkpoint is gone
    assert p.step == 300
    assert p.reason == ("checkpoint 300: likeness 0.78 (best), bleed 0.05; checkpoint 500 is "
                        "0.80 but bleeds 0.31 into 'a photo of a person'.")
    assert S.choose_best(rows, [100, 300]).reason == "checkpoint 300: likeness 0.78 (best), bleed 0.05."
    assert S.choose_best(rows, [100, 300, 500], max_bleed=0.4).step == 500


def test_unknown_bleed_does_not_reject_and_partial_faces_are_said():
    p = S.choose_best([_row(2, 0.7, None, faces=1), _row(4, 0.5, 0.0)], [2, 4])
    assert p.step == 2 and p.reason == ("checkpoint 2: likeness 0.70 (best), faces 1/2, bleed "
                                        "unknown.")


def test_every_checkpoint_bleeding_is_no_proposal():
    p = S.choose_best([_row(2, 0.7, 0.5), _row(4, 0.8, 0.4)], [2, 4])
    assert p.step is None
    assert p.reason == ("No proposal: every checkpoint bleeds more than 0.2; checkpoint 4 has the "
                        "best likeness 0.80 but bleeds 0.40 into 'a photo of a person'.")
    assert S.choose_best([], [2]).reason == "No checkpoint has been scored yet."


def test_table():
    text = S.format_table([_row(2, 0.7, 0.05), _row(4, 0.8, None)], 2)
    assert text.splitlines() == ["step  likeness  faces found  bleed  chosen",
                                 "2     0.70      2/2          0.05   *",
                                 "4     0.80      2/2          -"]


def test_card_section_names_the_step_and_how_it_was_measured():
    entry = {"checkpoints": [_row(2, 0.7, 0.05).to_event()], "reason": "checkpoint 2: ...",
             "bleed_prompts": ["a photo of a person"]}
    lines = S.card_section(entry, 2)
    assert "| 2 | 0.70 | 2/2 | 0.05 |" in lines
    assert "Best checkpoint of the run: checkpoint 2: ..." in lines
    assert any("dlib" in ln and "'a photo of a person'" in ln for ln in lines)
    assert S.card_section(entry, 4) == [] and S.card_section({}, 2) == []
