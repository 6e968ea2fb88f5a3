"""The training loop on tiny models (CPU, 64 px): overfitting, exports, features, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _train_support import fast_overrides, make_dataset
from lora_utils import assert_every_lora_tensor_loaded
from safetensors import safe_open
from safetensors.torch import load_file

from studio.config import load_config
from studio.runs.events import read_events
from studio.train.errors import TrainingError
from studio.train.loop import train

WIDE = "lora.target_modules=[to_k,to_q,to_v,to_out.0,proj_in,proj_out,ff.net.2,conv1,conv2]"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models, dataset):
    """One seeded run that overfits 1 image (LoRA on attention, projections, FF and resnets)."""
    one = make_dataset(tmp_path_factory.mktemp("ds1") / "one", n=1)
    run = tmp_path_factory.mktemp("runs") / "overfit"
    cfg = load_config(overrides=fast_overrides(run, one, tiny_models["base"], steps=12) + [
        WIDE, "lora.rank=8", "lora.alpha=16", "data.repeats=2",
        "train.batch_size=2", "train.learning_rate=2e-2",
        "train.weight_decay=0", "validation.at_end=true", "train.seed=1"])
    result = train(cfg)
    return run, result


def test_overfits_and_writes_the_run_folder(trained):
    run, result = trained
    assert result.status == "finished" and result.step == 12
    h = result.loss_history
    first, last = np.mean(h[:3]), np.mean(h[-3:])
    assert last < 0.85 * first, (first, last, h)
    for name in ("config.yaml", "events.jsonl", "pytorch_lora_weights.safetensors",
                 "lora_kohya.safetensors", "README.md", "manifest.json",
                 "checkpoints/checkpoint-000012/COMPLETE", "samples/step-000012/0.png"):
        assert (run / name).exists(), name
    # every Kohya file, the run's and each checkpoint's, says it is an SDXL LoRA (A1111/Forge)
    for kohya in (run / "lora_kohya.safetensors",
                  run / "checkpoints" / "checkpoint-000012" / "lora_kohya.safetensors"):
        with safe_open(str(kohya), "pt") as fh:
            assert fh.metadata()["ss_base_model_version"].startswith("sdxl_"), kohya
    ev = read_events(run)
    assert ev[0]["type"] == "start" and ev[0]["step"] == 0 and ev[0]["total_steps"] == 12
    steps = [e for e in ev if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert {"loss", "lr", "epoch", "steps_per_s", "eta_s", "mem_gb", "time"} <= set(steps[0])
    assert ev[-1] == {**ev[-1], "type": "end", "status": "finished", "step": 12}
    man = json.loads((run / "manifest.json").read_text())
    assert man["dataset"]["hash"] == "test-hash-1" and man["trigger"] == "tok"
    assert man["seed"] == 1 and man["wall_time_s"] > 0 and "diffusers" in man["packages"]
    card = (run / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "template:sd-lora" in card
    assert "license: openrail++" in card and "samples/step-000012/0.png" in card
    assert "instance_prompt: a photo of tok person" in card


def _image(pipe, **lora):
    import torch

    g = torch.Generator("cpu").manual_seed(0)
    return np.asarray(pipe("a photo of tok person smiling", num_inference_steps=2, height=64,
                           width=64, generator=g, output_type="np").images[0])


def test_lora_loads_and_changes_output(trained, tiny_models):
    import torch
    from diffusers import StableDiffusionXLPipeline

    run, _ = trained
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    plain = _image(pipe)
    pipe.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors", adapter_name="d")
    # Attention, projections, FF and resnet convs: every trained matrix is in the pipeline.
    n = assert_every_lora_tensor_loaded(pipe, run / "pytorch_lora_weights.safetensors", "d")
    assert n == len(load_file(str(run / "pytorch_lora_weights.safetensors")))
    assert np.abs(_image(pipe) - plain).max() > 1e-2
    pipe.unload_lora_weights()
    np.testing.assert_allclose(_image(pipe), plain, atol=1e-5)


def test_text_encoder_lora_and_kohya_file_match_diffusers(tmp_path, tiny_models, dataset):
    """Text-encoder LoRA on both encoders, alpha (8) != rank (4): the Kohya file gives the same
    image as the diffusers file in diffusers."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"]) + [
        "lora.rank=4", "lora.alpha=8", "lora.train_text_encoder=true", "train.learning_rate=1e-2"])
    assert train(cfg).status == "finished"
    diffusers_sd = load_file(str(run / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in diffusers_sd)
    assert any(k.startswith("text_encoder_2.") for k in diffusers_sd)
    kohya = load_file(str(run / "lora_kohya.safetensors"))
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {8.0}  # not the rank
    assert any(k.startswith("lora_te1_text_model_encoder_") for k in kohya)
    assert any(k.startswith("lora_te2_text_model_encoder_") for k in kohya)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    plain = _image(pipe)
    pipe.load_lora_weights(str(run), weight_name="pytorch_lora_weights.safetensors", adapter_name="d")
    assert_every_lora_tensor_loaded(pipe, run / "pytorch_lora_weights.safetensors", "d")
    with_diffusers = _image(pipe)
    assert np.abs(with_diffusers - plain).max() > 1e-3
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(run), weight_name="lora_kohya.safetensors", adapter_name="k")
    np.testing.assert_allclose(_image(pipe), with_diffusers, atol=1e-4)


def test_text_encoder_dora_magnitudes_survive_load_lora_weights(tmp_path, tiny_models, dataset):
    """DoRA on the UNet and both text encoders: every magnitude vector in the file is the one in
    the pipeline after diffusers' load_lora_weights (transformers' adapter loader skips a
    text-encoder magnitude saved without its ``.weight``, leaving it at its initial value)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"]) + [
        "lora.use_dora=true", "lora.train_text_encoder=true", "train.learning_rate=1e-2"])
    assert train(cfg).status == "finished"
    lora = run / "pytorch_lora_weights.safetensors"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"], torch_dtype=torch.float32)
    initial = {}  # each text-encoder layer's weight norm: a magnitude's initial value
    for key in (k for k in load_file(str(lora)) if "lora_magnitude_vector" in k):
        component, _, rest = key.partition(".")
        if component.startswith("text_encoder"):
            layer = getattr(pipe, component).get_submodule(rest.split(".lora_magnitude")[0])
            initial[key] = layer.weight.detach().norm(p=2, dim=1)
    pipe.load_lora_weights(str(run), weight_name=lora.name, adapter_name="d")
    assert_every_lora_tensor_loaded(pipe, lora, "d")
    saved = load_file(str(lora))
    trained = [k for k, norm in initial.items() if not torch.equal(saved[k], norm)]
    assert len(initial) == 16 and len(trained) >= 12, (len(initial), len(trained))


@pytest.mark.parametrize("name,extra", [
    ("prior", ["data.with_prior_preservation=true", "data.num_class_images=2",
               "data.class_prompt=a photo of person", "data.prior_loss_weight=0.8"]),
    ("adamw8bit+cache_latents", ["train.optimizer=adamw8bit", "data.cache_latents=true"]),
    ("prodigy+snr", ["train.optimizer=prodigy", "train.learning_rate=1.0", "train.snr_gamma=5.0",
                     "train.prodigy_d_coef=2.0", "train.noise_offset=0.05"]),
    ("dora+accumulation+cosine", ["lora.use_dora=true", "train.gradient_accumulation_steps=2",
                                  "train.lr_scheduler=cosine", "train.lr_warmup_steps=1",
                                  "train.gradient_checkpointing=true"]),
])
def test_feature_runs(name, extra, tmp_path, tiny_models, dataset):
    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"]) + extra)
    result = train(cfg)
    assert result.status == "finished" and result.step == 2
    assert all(np.isfinite(result.loss_history))
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    if name == "prior":
        assert len(list((run / "class_images").glob("*.png"))) == 2  # generated with the base
        assert any("class images" in e.get("message", "") for e in read_events(run))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny_models, dataset):
    run = tmp_path / "run"
    good = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"]) +
                       ["checkpoints.every_n_steps=1"])
    train(good)
    bad = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"], steps=4) +
                      ["train.noise_offset=.inf"])
    with pytest.raises(TrainingError, match=r"The loss became nan at step 3; training stopped"):
        train(bad, resume="latest")
    ev = read_events(run)
    assert ev[-2]["type"] == "error" and "loss became nan" in ev[-2]["message"]
    assert ev[-1]["type"] == "end" and ev[-1]["status"] == "failed"
    assert (run / "checkpoints" / "checkpoint-000002" / "COMPLETE").is_file()


def test_out_of_memory_names_the_settings(tmp_path, tiny_models, dataset, monkeypatch):
    import torch

    from studio.train import loop

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "training_loss", oom)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", dataset, tiny_models["base"]))
    with pytest.raises(TrainingError) as ei:
        train(cfg)
    msg = str(ei.value)
    assert msg.startswith("The GPU ran out of memory at step 1;")
    for setting in ("data.resolution", "train.batch_size", "train.gradient_checkpointing",
                    "train.optimizer=adamw8bit", "low-vram"):
        assert setting in msg
    assert read_events(tmp_path / "run")[-2] == {**read_events(tmp_path / "run")[-2],
                                                 "type": "error", "message": msg}


def test_validation_samples_with_lora_dropout_off_in_every_model(tmp_path, tiny_models, dataset,
                                                                 monkeypatch):
    """LoRA dropout on the UNet and both text encoders is off (eval) while validation images
    are made, and training mode comes back after."""
    from studio.train import loop, sampling

    modes: list[tuple[bool, ...]] = []
    write_samples = sampling.write_samples

    def record(pipe, *a, **k):
        modes.append((pipe.unet.training, pipe.text_encoder.training,
                      pipe.text_encoder_2.training))
        return write_samples(pipe, *a, **k)

    monkeypatch.setattr(sampling, "write_samples", record)
    cfg = load_config(overrides=fast_overrides(tmp_path / "run", dataset, tiny_models["base"]) + [
        "lora.train_text_encoder=true", "lora.dropout=0.5", "validation.every_n_steps=1"])
    trainer = loop.Trainer(cfg)
    assert trainer.run().status == "finished"
    assert modes == [(False, False, False)]  # at step 1 (the last step samples no more)
    assert all(m.training for m in trainer._lora_modules().values())
