"""The training hook's decisions without a model: when it scores, when a checkpoint renders
validation images first, and that a failure is one warning, never a stopped training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from studio.config import load_config
from studio.identity.hook import LikenessHook, bleed_prompts, wanted
from studio.identity.subject import Subject
from studio.runs.folder import RunFolder


class Recorder:
    def __init__(self):
        self.logs, self.items = [], []

    def on_log(self, level, message):
        self.logs.append((level, message))


def _hook(tmp_path, *overrides, stop=False):
    cfg = load_config(overrides=["validation.num_images=2", "validation.every_n_steps=10",
                                 "validation.at_end=true", *overrides])
    sampled = []
    t = SimpleNamespace(cfg=cfg, folder=RunFolder(tmp_path), instance_prompt="a photo of tok man",
                        ds=SimpleNamespace(class_word="man"), cb=Recorder(),
                        stop=SimpleNamespace(is_set=lambda: stop), _sample=sampled.append)
    hook = LikenessHook(t, Subject(np.zeros(128, np.float32), 3, 3, "dlib", group=3), None)
    hook.on_start({"total_steps": 40})
    return hook, t, sampled


def test_checkpoints_without_a_validation_render_one_first(tmp_path):
    hook, _, sampled = _hook(tmp_path)
    for step in (10, 15, 40):  # 10: validation due; 40: the end-of-run sampling follows
        hook.on_checkpoint({"step": step})
    assert sampled == [15]
    hook, _, sampled = _hook(tmp_path, stop=True)
    hook.on_checkpoint({"step": 15})  # cancelling: no extra images
    assert sampled == []


def test_a_round_is_scored_once_complete_and_a_failure_is_one_warning(tmp_path):
    hook, t, _ = _hook(tmp_path)
    calls = []

    def boom(step, got):
        calls.append((step, len(got)))
        raise OSError("disk gone")

    hook.score = boom
    hook.on_sample({"step": 10, "path": "samples/step-000010/0.png"})
    assert calls == []  # 1 of 2 images
    hook.on_sample({"step": 10, "path": "samples/step-000010/1.png"})
    assert calls == [(10, 2)]
    assert t.cb.logs == [("warning", "Likeness was not measured at step 10: disk gone")]


def test_settings():
    cfg = load_config()
    assert bleed_prompts(cfg, "woman") == ["a photo of a woman"]
    cfg = load_config(overrides=["data.class_prompt=a photo of a man"])
    assert bleed_prompts(cfg, "man") == ["a photo of a man"]
    cfg = load_config(overrides=["validation.bleed_prompts=[a man, a woman]"])
    assert bleed_prompts(cfg, "man") == ["a man", "a woman"]
    face = Subject(np.zeros(128, np.float32), 2, 4, "dlib", group=2)
    none = Subject(None, 0, 4, "dlib")
    assert wanted(None, face) == (False, None)  # 2 look-alike photos: no identity yet
    assert wanted(True, face) == (True, None)
    assert wanted(None, Subject(face.vector, 3, 4, "dlib", group=3)) == (True, None)
    on, warning = wanted(True, none)
    assert not on and warning.startswith("validation.likeness is on but no training photo")
    assert wanted(False, face) == (False, None)


def test_a_large_set_is_judged_on_at_most_64_photos():
    from PIL import Image

    from studio.identity import subject as S

    class CountingEngine:
        name = "fake"
        calls = 0

        def embed(self, rgb):
            self.calls += 1
            return []

    class Example:
        def load(self):
            return Image.new("RGB", (8, 8))

    eng = CountingEngine()
    sub = S.subject_of([Example() for _ in range(200)], eng)
    assert eng.calls <= S.MAX_PHOTOS and (sub.images, sub.faces, sub.vector) == (200, 0, None)
