"""STUDIO_CPU_PRECISION: the GPU's number formats on a CPU (tiny models, 64 px)."""

from __future__ import annotations

import numpy as np
import pytest
from _train_support import fast_overrides, make_dataset

from studio.config import ConfigError, load_config
from studio.train import runtime, sdxl
from studio.train.loop import Trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=3)


def run_trainer(cfg, monkeypatch) -> tuple[Trainer, set]:
    """Train ``cfg``; returns the trainer and the dtypes a UNet LoRA layer computed in."""
    seen: set = set()
    add_lora = sdxl.add_lora

    def add_lora_and_watch(models, *a, **k):
        trained = add_lora(models, *a, **k)
        layer = next(m for n, m in models.unet.named_modules() if n.endswith("lora_A.default"))
        layer.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
        return trained

    monkeypatch.setattr(sdxl, "add_lora", add_lora_and_watch)
    trainer = Trainer(cfg)
    assert trainer.run().status == "finished"
    return trainer, seen


def assert_gpu_dtypes(trainer: Trainer, weight_dtype, autocast_dtypes: set) -> None:
    """Frozen weights in ``weight_dtype``, the force_upcast VAE and every LoRA parameter in fp32,
    and the LoRA layers computed under autocast."""
    import torch

    m = trainer.m
    unet = trainer.acc.unwrap_model(m.unet)
    assert trainer.weight_dtype == weight_dtype
    lora = {n: p.dtype for n, p in unet.named_parameters() if "lora_" in n}
    frozen = {p.dtype for n, p in unet.named_parameters() if "lora_" not in n}
    assert lora and set(lora.values()) == {torch.float32}
    assert frozen == {weight_dtype}
    assert {p.dtype for te in m.text_encoders for p in te.parameters()} == {weight_dtype}
    assert m.vae.config.force_upcast and {p.dtype for p in m.vae.parameters()} == {torch.float32}
    assert autocast_dtypes == {weight_dtype}


def test_unknown_cpu_precision_is_one_sentence(monkeypatch):
    monkeypatch.setenv("STUDIO_CPU_PRECISION", "fp8")
    with pytest.raises(ConfigError) as ei:
        runtime.cpu_precision()
    assert str(ei.value) == ("STUDIO_CPU_PRECISION='fp8' is not a precision; use bf16, fp16 or no "
                             "(unset, a CPU trains in fp32).")
    monkeypatch.setenv("STUDIO_CPU_PRECISION", "")
    assert runtime.cpu_precision() is None


def test_fp16_emulation_keeps_gpu_dtypes_and_a_grad_scaler(tmp_path, tiny_models, dataset,
                                                           monkeypatch):
    """fp16 frozen weights, fp32 VAE and LoRA parameters, fp16 autocast, and a GradScaler that
    scaled the loss and stepped the optimizer, as accelerate does on a GPU."""
    import torch

    monkeypatch.setenv("STUDIO_CPU_PRECISION", "fp16")
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", dataset, tiny_models["base"]) +
                      ["train.mixed_precision=fp16"])
    trainer, autocast_dtypes = run_trainer(cfg, monkeypatch)
    assert trainer.acc.mixed_precision == "fp16"
    assert_gpu_dtypes(trainer, torch.float16, autocast_dtypes)
    scaler = trainer.acc.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert trainer.optimizer.scaler is scaler
    assert scaler._scale is not None  # set by the first scale(loss) of a backward
    assert all(np.isfinite(trainer.loss_history))
