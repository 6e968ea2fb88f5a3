"""A resume in the middle of an epoch is step-identical to an unbroken run (in-process, tiny
models, 64 px), in fp32 and in the fp16 emulation (STUDIO_CPU_PRECISION), with and without
cached latents."""

from __future__ import annotations

import threading

import pytest
from _train_support import fast_overrides, make_dataset
from safetensors.torch import load_file

from studio.config import load_config
from studio.train.callbacks import TrainCallbacks
from studio.train.loop import Trainer

STEPS, STOP_AT = 5, 3  # 2 steps per epoch: the checkpoint at step 3 is in the middle of epoch 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


class _StopAfter(TrainCallbacks):
    """Asks the trainer to stop once ``step`` is done (it then saves a checkpoint there)."""

    def __init__(self, step: int):
        self.step, self.flag = step, threading.Event()

    def on_step(self, info):
        if info["step"] == self.step:
            self.flag.set()


def _config(run, dataset, base, precision, extra):
    return load_config(overrides=fast_overrides(run, dataset, base, steps=STEPS) + [
        "train.learning_rate=1e-2", "lora.dropout=0.1", "train.noise_offset=0.05",
        "train.seed=3", f"train.mixed_precision={precision}", *extra])


@pytest.mark.parametrize("precision", ["no", "fp16"], ids=["fp32", "fp16"])
@pytest.mark.parametrize("extra", [["data.cache_latents=false"], []], ids=["", "cached"])
def test_resume_mid_epoch_is_step_identical(precision, extra, tmp_path, tiny_models, dataset,
                                            monkeypatch):
    if precision != "no":
        monkeypatch.setenv("STUDIO_CPU_PRECISION", precision)
    base = tiny_models["base"]
    whole = Trainer(_config(tmp_path / "whole", dataset, base, precision, extra))
    assert whole.run().status == "finished"

    broken = tmp_path / "broken"
    stop = _StopAfter(STOP_AT)
    first = Trainer(_config(broken, dataset, base, precision, extra), stop, stop.flag).run()
    assert first.status == "cancelled" and first.step == STOP_AT
    resumed = Trainer(_config(broken, dataset, base, precision, extra), resume="latest")
    second = resumed.run()
    assert second.status == "finished" and second.step == STEPS

    a = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(broken / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    assert second.loss_history == whole.loss_history
    if precision == "fp16":  # the loss scale and its growth count continue from the checkpoint
        assert resumed.acc.scaler.state_dict() == whole.acc.scaler.state_dict()
