"""Optimizer setup on tiny runs: Prodigy trains the text-encoder LoRA too."""

from __future__ import annotations

import pytest
from _train_support import fast_overrides, make_dataset

from studio.config import load_config
from studio.runs.events import read_events
from studio.train.callbacks import TrainCallbacks
from studio.train.loop import Trainer

pytest.importorskip("prodigyopt")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


class _Snapshot(TrainCallbacks):
    """Copies every optimizer group's parameters when training starts (step 0)."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.groups = trainer, []

    def on_start(self, info):
        self.groups = [[p.detach().clone() for p in g["params"]]
                       for g in self.trainer.optimizer.param_groups]


def _largest_change(before, params) -> float:
    return max(float((p.detach() - b).abs().max()) for b, p in zip(before, params, strict=True))


def test_prodigy_trains_the_text_encoder_lora_at_the_main_rate(tmp_path, tiny_models, dataset):
    """Prodigy's step is d * lr: a text_encoder_lr meant for AdamW (portrait-quality's 5e-5)
    would freeze the text-encoder LoRA. Both groups get train.learning_rate and a warning says so."""
    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"], steps=3) + [
        "train.optimizer=prodigy", "train.learning_rate=1.0", "lora.train_text_encoder=true",
        "train.text_encoder_lr=5e-5"])
    trainer = Trainer(cfg)
    snap = _Snapshot(trainer)
    trainer.user_callbacks = snap
    assert trainer.run().status == "finished"

    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and [g["lr"] for g in groups] == [1.0, 1.0]
    unet, te = (_largest_change(b, g["params"]) for b, g in zip(snap.groups, groups, strict=True))
    assert unet > 0 and te > 0.01 * unet, (unet, te)  # the same order, not 5e-5 of it
    warnings = [e["message"] for e in read_events(run)
                if e["type"] == "log" and e.get("level") == "warning"]
    assert any("train.text_encoder_lr=5e-05" in w and "Prodigy" in w for w in warnings), warnings
