"""Generation speed and memory modes on the tiny models (CPU): which mode is chosen and why,
identical images with speed mode on and off (with and without a LoRA, with the refiner), the
offload modes' per-request settings and refiner hand-off, and compile without recompiling on a
LoRA switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lora_utils import make_tiny_lora

from studio.generate import performance as perf
from studio.generate.engine import Generator
from studio.generate.request import GenerationError, GenerationRequest


def _pixels(gen: Generator, **kw) -> np.ndarray:
    req = GenerationRequest(prompt="a photo of TOK person", seed=kw.pop("seed", 3), steps=2,
                            width=kw.pop("width", 64), height=kw.pop("height", 64), **kw)
    return np.asarray(gen.generate(req)[0].image).astype(np.int16)


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory):
    return make_tiny_lora(tiny_models["base"], tmp_path_factory.mktemp("lora"), rank=4,
                          alpha=8)["diffusers"]


def test_the_mode_follows_free_memory_and_the_refiner(monkeypatch):
    monkeypatch.delenv(perf.MEMORY_ENV, raising=False)
    monkeypatch.delenv(perf.SPEED_ENV, raising=False)
    assert perf.choose("cuda", refiner=False, free_gib=22).mode == "gpu"
    on_16 = perf.choose("cuda", refiner=True, free_gib=15.5)
    assert on_16.mode == "model-offload" and "15.5 GiB free" in on_16.reason
    assert perf.choose("cuda", refiner=False, free_gib=15.5).mode == "gpu"
    assert perf.choose("cuda", refiner=False, free_gib=4).mode == "sequential-offload"
    assert perf.choose("cuda", refiner=False, free_gib=22).speed  # speed mode: default on CUDA
    cpu = perf.choose("cpu", refiner=True)
    assert cpu.mode == "gpu" and not cpu.speed and "no GPU memory limit" in cpu.describe()
    monkeypatch.setenv(perf.MEMORY_ENV, "sequential-offload")
    assert perf.choose("cuda", refiner=False, free_gib=80).mode == "sequential-offload"
    assert "needs a CUDA GPU" in perf.choose("cpu", refiner=False).reason
    monkeypatch.setenv(perf.MEMORY_ENV, "tiny")
    with pytest.raises(GenerationError, match="not a memory mode"):
        perf.choose("cuda", refiner=False, free_gib=80)
    monkeypatch.setenv(perf.MEMORY_ENV, "auto")
    monkeypatch.setenv(perf.SPEED_ENV, "1")
    line = perf.ui_line("cpu")
    assert line.startswith("Memory: all models on the GPU") and "speed mode on" in line


def test_speed_mode_gives_the_same_images(tiny_models, lora, monkeypatch):
    """Off, then on (channels_last, fused QKV while no LoRA is active): the same pixels within
    one 8-bit level; with a LoRA the QKV projections are unfused, so the LoRA still applies."""
    gen = Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                    device="cpu")
    monkeypatch.setenv(perf.SPEED_ENV, "0")
    plain, with_lora = _pixels(gen), _pixels(gen, lora=str(lora))
    refined = _pixels(gen, refiner=True, refiner_switch=0.5)
    assert gen.modes["fused_qkv"] is False
    monkeypatch.setenv(perf.SPEED_ENV, "1")
    fast = _pixels(gen)
    assert gen.modes["fused_qkv"] is True and gen.base_pipe().fusing_unet
    assert gen.base_pipe().unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(fast - plain).max() <= 1
    fast_lora = _pixels(gen, lora=str(lora))
    assert gen.modes["fused_qkv"] is False and not gen.modes["unet_channels_last"]
    assert np.abs(fast_lora - with_lora).max() <= 1
    assert np.abs(with_lora - plain).mean() > 1.0  # the LoRA is not bypassed
    assert np.abs(_pixels(gen, refiner=True, refiner_switch=0.5) - refined).max() <= 1
    assert np.abs(_pixels(gen) - plain).max() <= 1  # fused again once the LoRA is off
    assert gen.modes["fused_qkv"] is True


def test_offload_modes_decode_with_slicing_and_tiling_and_hand_off_to_the_refiner(
        tiny_models, monkeypatch):
    """The offload plan's per-request settings and the refiner hand-off run on the CPU; the
    offload hooks themselves are recorded (they need an accelerator, see the next test)."""
    moved: list[tuple[str, str]] = []
    monkeypatch.setattr(perf, "_set_offload",
                        lambda pipe, mode, device, before: moved.append((type(pipe).__name__, mode)))
    plan = perf.Plan("model-offload", speed=False, compile=False, reason="test")
    monkeypatch.setattr(perf, "choose", lambda device, refiner, free_gib=None: plan)
    gen = Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                    device="cpu", dtype=torch.float32)
    gen._loads_on = "cpu"
    img = _pixels(gen, refiner=True, refiner_switch=0.5, width=1024 + 64, height=1024)
    assert img.shape == (1024, 1088, 3)
    assert gen.modes == {"memory_mode": "model-offload", "speed": False, "vae_tiling": True,
                         "vae_slicing": True, "fused_qkv": False, "unet_channels_last": False}
    assert gen.base_pipe().vae.use_tiling and gen.base_pipe().vae.use_slicing
    assert ("StableDiffusionXLPipeline", "model-offload") in moved
    assert ("StableDiffusionXLImg2ImgPipeline", "model-offload") in moved
    _pixels(gen)
    assert gen.modes["vae_tiling"] is False and not gen.base_pipe().vae.use_tiling


@pytest.mark.parametrize("mode", ["model-offload", "sequential-offload"])
def test_offload_generates_base_and_refiner(mode, tiny_models, monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip(f"{mode} needs a CUDA device (accelerate's offload hooks move models to an "
                    "accelerator); this machine has none")
    monkeypatch.setenv(perf.MEMORY_ENV, mode)
    gen = Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                    device="cuda")
    assert _pixels(gen, refiner=True, refiner_switch=0.5).shape == (64, 64, 3)
    assert gen.modes["memory_mode"] == mode
