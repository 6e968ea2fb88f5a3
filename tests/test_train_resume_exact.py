"""A resume in the middle of an epoch is step-identical to an unbroken run (in-process, tiny)."""

from __future__ import annotations

import threading

import pytest
from _train_support import fast_overrides, make_dataset
from safetensors.torch import load_file

from studio.config import load_config
from studio.train.callbacks import TrainCallbacks
from studio.train.loop import train

STEPS, STOP_AT = 5, 3  # 2 steps per epoch: the checkpoint at step 3 is in the middle of epoch 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


class _StopAt(TrainCallbacks):
    def __init__(self, step: int):
        self.step, self.flag = step, threading.Event()

    def on_step(self, info):
        if info["step"] == self.step:
            self.flag.set()


def _config(run, dataset, base, extra):
    return load_config(overrides=fast_overrides(run, dataset, base, steps=STEPS) + [
        "train.learning_rate=1e-2", "lora.dropout=0.1", "train.noise_offset=0.05",
        "train.seed=3", *extra])


@pytest.mark.parametrize("extra", [[], ["data.cache_latents=true"]], ids=["fp32", "fp32-cached"])
def test_resume_mid_epoch_is_step_identical(extra, tmp_path, tiny_models, dataset):
    base = tiny_models["base"]
    whole = tmp_path / "whole"
    assert train(_config(whole, dataset, base, extra)).status == "finished"

    broken = tmp_path / "broken"
    stop = _StopAt(STOP_AT)
    first = train(_config(broken, dataset, base, extra), callbacks=stop, stop=stop.flag)
    assert first.status == "cancelled" and first.step == STOP_AT
    second = train(_config(broken, dataset, base, extra), resume="latest")
    assert second.status == "finished" and second.step == STEPS

    a = load_file(str(whole / "pytorch_lora_weights.safetensors"))
    b = load_file(str(broken / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff == 0.0, diff
    assert second.loss_history == first.loss_history + second.loss_history[STOP_AT:]
