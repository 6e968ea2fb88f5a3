"""The memory pre-flight: its estimate, the one-sentence refusal naming the settings that would
fit, ``python -m studio train --check`` (exit 0 fits, 2 does not) and the job service's refusal
at submit. STUDIO_VRAM_GB stands in for a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _train_support import ROOT, env

from studio.config import load_config
from studio.train import preflight as pf


def test_portrait_at_1024_is_the_calibrated_figure_and_settings_move_it():
    est = pf.estimate(load_config(preset="portrait"), (None, "none"))
    assert est.fits is None and est.peak_phase == "training"
    assert est.parts["unet"] == pytest.approx(2_567_463_684 * 2 / 2**30)
    assert est.parts["activations"] == pf.CALIBRATION["train"][0]
    assert 12.5 < est.peak_gib < 14.0  # SimpleTuner's 13 GiB at 1024 px, batch 1, bf16
    low = pf.estimate(load_config(preset="low-vram"), (None, "none"))
    assert low.phases["training"] < 7.0  # SimpleTuner's 6.5 GiB with checkpointing

    def peak(*overrides):
        return pf.estimate(load_config(preset="portrait", overrides=list(overrides)),
                           (None, "")).phases["training"]

    assert peak("train.gradient_checkpointing=true") < peak() - 6
    assert peak("train.batch_size=2") == pytest.approx(peak() + pf.CALIBRATION["train"][0])
    assert peak("data.resolution=512") < peak() - 5
    assert peak("data.with_prior_preservation=true") > peak("data.with_prior_preservation=false")
    assert peak("train.optimizer=adamw8bit") < peak() < peak("train.optimizer=prodigy")
    assert peak("lora.train_text_encoder=true") > peak() + 1.4  # the encoders stay on the GPU


def test_sizes_come_from_the_local_models_headers(tiny_models):
    """For a local base the parameter counts are read from its safetensors headers: they equal
    the loaded models' counts, and the LoRA count equals what peft adds."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    cfg = load_config(overrides=[f"model.base={tiny_models['base']}", "lora.rank=4"])
    sizes, source = pf.model_sizes(cfg)
    assert str(tiny_models["base"]) in source
    unet = UNet2DConditionModel.from_pretrained(tiny_models["base"], subfolder="unet")
    assert sizes["unet"] == sum(p.numel() for p in unet.parameters())
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(cfg.lora.target_modules)))
    assert sizes["lora"] == sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


def test_a_config_that_cannot_fit_is_one_sentence_with_settings_that_fit():
    cfg = load_config(preset="portrait")
    with pytest.raises(pf.MemoryPreflightError) as err:
        pf.check(cfg, (8.0, "STUDIO_VRAM_GB=8"))
    msg = str(err.value)
    assert "\n" not in msg and "8.0 GiB" in msg and "train.gradient_checkpointing=true" in msg
    changes = msg.split("; set ")[1].removesuffix(" to fit.").split(", ")
    fixed = load_config(preset="portrait", overrides=changes)
    assert pf.estimate(fixed, (8.0, "")).fits
    assert pf.check(cfg, (24.0, "a 24 GiB GPU")).fits
    with pytest.raises(pf.MemoryPreflightError, match="use a GPU with more memory"):
        pf.check(cfg, (4.0, "STUDIO_VRAM_GB=4"))


def test_vram_figure_from_the_environment(monkeypatch):
    monkeypatch.setenv(pf.VRAM_ENV, "12")
    assert pf.vram_gib() == (12.0, "STUDIO_VRAM_GB=12")
    monkeypatch.setenv(pf.VRAM_ENV, "lots")
    with pytest.raises(pf.MemoryPreflightError, match="not a number"):
        pf.vram_gib()
    monkeypatch.delenv(pf.VRAM_ENV)
    assert pf.vram_gib()[0] is None  # no CUDA here: no limit


@pytest.mark.parametrize("vram,code", [("8", 2), ("24", 0)])
def test_check_flag_prints_the_estimate_and_exits_without_training(vram, code, tmp_path):
    r = subprocess.run([sys.executable, "-m", "studio", "train", "--preset", "portrait",
                        "--out", str(tmp_path / "run"), "--check"], cwd=ROOT,
                       env=env(STUDIO_VRAM_GB=vram), capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr[-2000:]
    assert "Estimated peak GPU memory 13." in r.stdout
    assert ("does NOT fit" in r.stdout) == (code == 2)
    assert not (tmp_path / "run").exists()
    if code == 2:
        assert r.stderr.strip().startswith("error: This training config needs about")


def test_the_job_service_refuses_at_submit_what_cannot_fit(workspace, tmp_path, monkeypatch):
    from studio.jobs.service import JobService

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    svc = JobService(workspace)
    monkeypatch.setenv(pf.VRAM_ENV, "8")
    with pytest.raises(pf.MemoryPreflightError, match="train.gradient_checkpointing=true"):
        svc.submit(svc.build_config(ds, preset="portrait"), preset="portrait")
    assert workspace.list_runs() == []
    monkeypatch.setenv(pf.VRAM_ENV, "8")
    job = svc.submit(svc.build_config(ds, preset="portrait", overrides=[
        "train.gradient_checkpointing=true", "validation.every_n_steps=null",
        "validation.at_end=false", "data.resolution=512"]), preset="portrait")
    assert job.state == "queued"
