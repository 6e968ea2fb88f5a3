"""Training speed settings: fused AdamW where it applies (CUDA parameters) and the optional
torch.compile of the UNet (train.compile_unet or STUDIO_COMPILE=1)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _train_support import fast_overrides, make_dataset

from studio.config import load_config
from studio.train import runtime
from studio.train.loop import Trainer
from studio.train.optimizers import build_optimizer, fused_adamw


def test_fused_adamw_only_for_cuda_float_parameters():
    cpu = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    assert not fused_adamw(cpu)
    opt = build_optimizer(cpu, load_config().train, print)
    assert not opt.defaults.get("fused")
    cuda = SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert fused_adamw([{"params": [cuda, cuda]}])
    assert not fused_adamw([{"params": [cuda, SimpleNamespace(is_cuda=False, dtype=torch.float32)]}])
    assert not fused_adamw([{"params": []}])


@pytest.mark.parametrize("how", ["config", "env"])
def test_compiled_unet_trains_like_the_eager_one(how, tmp_path, tiny_models, monkeypatch):
    """The compiled UNet (here with the aot_eager backend, which needs no C compiler) is what
    the steps run, and the run's losses are the eager run's."""
    monkeypatch.setattr(runtime, "COMPILE_BACKEND", "aot_eager")
    ds = make_dataset(tmp_path / "ds", n=2)
    base = fast_overrides(tmp_path / "eager", ds, tiny_models["base"], steps=3)
    eager = Trainer(load_config(overrides=base)).run()
    extra = ["train.compile_unet=true"] if how == "config" else []
    if how == "env":
        monkeypatch.setenv(runtime.COMPILE_ENV, "1")
    trainer = Trainer(load_config(overrides=fast_overrides(tmp_path / "compiled", ds,
                                                           tiny_models["base"], steps=3) + extra))
    result = trainer.run()
    assert result.status == "finished"
    assert isinstance(trainer.m.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert result.loss_history == pytest.approx(eager.loss_history, rel=1e-4)
    assert (tmp_path / "compiled" / "pytorch_lora_weights.safetensors").is_file()
