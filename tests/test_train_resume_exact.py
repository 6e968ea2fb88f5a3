"""A resume in the middle of an epoch is step-identical to an unbroken run (in-process, tiny
models, 64 px), in fp32 and in the fp16 emulation (STUDIO_CPU_PRECISION), with and without
cached latents, and with each likeness technique on: pivotal tuning (the new token rows),
face-weighted loss (masks flipped and cropped with their photos) and aspect-ratio buckets."""

from __future__ import annotations

import threading

import pytest
from _train_support import fast_overrides, make_dataset
from PIL import Image
from safetensors.torch import load_file

from studio.config import load_config
from studio.train.callbacks import TrainCallbacks
from studio.train.loop import Trainer

STEPS, STOP_AT = 5, 3  # 2 steps per epoch: the checkpoint at step 3 is in the middle of epoch 1


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory):
    """Two photos of different shapes (two buckets), each with an uneven face mask."""
    import numpy as np

    ds = make_dataset(tmp_path_factory.mktemp("ds") / "mixed", n=2)
    (ds / "masks").mkdir()
    for i, size in enumerate([(96, 80), (128, 72)]):
        p = ds / "images" / f"{i:04d}.png"
        Image.open(p).convert("RGB").resize(size).save(p)
        ramp = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
        Image.fromarray(ramp, "L").save(ds / "masks" / f"{i:04d}.png")
    return ds


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
    _check_resume(tmp_path, tiny_models["base"], dataset, precision, extra)


@pytest.mark.parametrize("extra", [
    ["lora.train_text_embeddings=true", "train.text_embeddings_frac=0.7"],
    ["data.mask_weight=0.3", "data.random_flip=true", "data.crop=random"],
    ["data.mask_weight=0.3", "data.cache_latents=true"],
    ["data.buckets=true", "data.random_flip=true"],
], ids=["pivotal", "masks", "masks-cached", "buckets"])
def test_resume_is_step_identical_with_each_likeness_technique(extra, tmp_path, tiny_models,
                                                               mixed_dataset):
    _check_resume(tmp_path, tiny_models["base"], mixed_dataset, "no", extra)


def _check_resume(tmp_path, base, dataset, precision, extra):
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
    emb = "embeddings.safetensors"
    if (tmp_path / "whole" / emb).exists():
        ea, eb = load_file(str(tmp_path / "whole" / emb)), load_file(str(broken / emb))
        assert all((ea[k] - eb[k]).abs().max() == 0 for k in ("clip_l", "clip_g"))
    if precision == "fp16":  # the loss scale and its growth count continue from the checkpoint
        assert resumed.acc.scaler.state_dict() == whole.acc.scaler.state_dict()
    return whole, resumed
