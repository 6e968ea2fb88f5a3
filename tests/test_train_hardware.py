""""Recommended for this GPU": preset and batch size from the free memory (the pre-flight's
estimate), and the time per 100 steps, measured or scaled from TFLOPs and labelled so."""

from __future__ import annotations

import pytest

from studio.train import hardware as hw


def test_preset_and_batch_follow_the_free_memory():
    big = hw.recommend(80.0, "NVIDIA H100 80GB HBM3")
    assert (big.preset, big.batch_size) == ("portrait", 4)
    assert big.s_per_100_steps == pytest.approx(0.61 * 4 * 100) and "measured" in big.time_source
    mid = hw.recommend(15.5, "Tesla T4")
    assert (mid.preset, mid.batch_size) == ("portrait", 1)
    assert mid.time_source.startswith("estimate") and "65" in mid.time_source
    assert mid.s_per_100_steps == pytest.approx(0.61 * 989 / 65 * 100)
    small = hw.recommend(12.0, "NVIDIA GeForce RTX 3080 Ti")
    assert small.preset == "low-vram" and "low-vram" in small.describe()
    none = hw.recommend(4.0, "Tiny GPU")
    assert none.preset is None and "even `low-vram`" in none.describe()
    assert "No CUDA GPU" in hw.recommend(None, "cpu").describe()


def test_gpu_class_matching():
    assert hw.gpu_class("NVIDIA A10G") == "A10G" and hw.gpu_class("NVIDIA A100-SXM4-80GB") == "A100"
    assert hw.gpu_class("NVIDIA GeForce RTX 4090") == "4090" and hw.gpu_class("Mystery") is None
    assert hw.s_per_step("portrait", "Mystery") == (None, "unknown GPU class")


def test_the_train_tab_line_on_this_machine():
    from studio.ui.train_hardware import recommendation_line

    assert recommendation_line().startswith(("No CUDA GPU", "Recommended for this GPU"))
