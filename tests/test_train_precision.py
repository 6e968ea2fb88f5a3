"""STUDIO_CPU_PRECISION: the GPU's number formats on a CPU (tiny models, 64 px)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _train_support import fast_overrides, make_dataset
from lora_utils import assert_every_lora_tensor_loaded

from studio.config import ConfigError, ModelSection, load_config
from studio.lora.formats import EXPORT_FORMATS
from studio.runs.events import read_events
from studio.runs.export import export_checkpoint
from studio.train import loop, runtime, sdxl
from studio.train.data import ensure_class_images
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


def test_class_images_generate_with_bf16_models_beside_the_fp32_vae(tmp_path, tiny_models):
    """A GPU's dtypes for class images: bf16 UNet and text encoders, the base's force_upcast VAE
    in fp32 (this crashed: 'Input type (c10::BFloat16) and bias type (float)')."""
    import torch

    m = sdxl.load_models(ModelSection(base=str(tiny_models["base"])), "cpu", torch.bfloat16)
    assert m.unet.dtype == torch.bfloat16 and m.vae.dtype == torch.float32

    def make_pipeline():
        return sdxl.build_pipeline(m.unet, m.text_encoders, m.vae, m.tokenizers,
                                   lambda: sdxl.sampling_scheduler(m.base, m.noise_scheduler), "cpu")

    made = ensure_class_images(tmp_path / "class", 2, "a photo of person", make_pipeline, 64, 2,
                               0, "cpu")
    assert [e.source.name for e in made] == ["class-00000.png", "class-00001.png"]
    for e in made:
        im = e.load()
        assert im.size == (64, 64) and np.asarray(im).std() > 1  # decoded, not NaN-black


def test_prior_preservation_in_bf16_draws_every_class_image_and_repairs_each_epoch(
        tmp_path, tiny_models, dataset, monkeypatch):
    """3 photos, 8 class images (6 given, 2 generated with the base), bf16 with the base's fp32
    VAE: epoch 0 trains on all 8 class images, and epoch 1 pairs them with other photos."""
    import torch
    from PIL import Image

    class_dir = tmp_path / "class_images"
    class_dir.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            class_dir / f"class-{k:05d}.png")

    monkeypatch.setenv("STUDIO_CPU_PRECISION", "bf16")
    keys: list[list] = []
    training_loss = loop.training_loss

    def record(batch, *a, **k):
        keys.append(list(batch["keys"]))
        return training_loss(batch, *a, **k)

    monkeypatch.setattr(loop, "training_loss", record)
    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, dataset, tiny_models["base"], steps=4) + [
        "data.with_prior_preservation=true", "data.num_class_images=8", "train.batch_size=4",
        f"data.class_data_dir={class_dir}"])
    trainer, autocast_dtypes = run_trainer(cfg, monkeypatch)
    assert_gpu_dtypes(trainer, torch.bfloat16, autocast_dtypes)
    assert len(list(class_dir.glob("*.png"))) == 8
    assert len(keys) == 4  # 2 steps per epoch: 8 items of 4

    def pairing(batches):  # {(photo, class image)} of an epoch
        return {(i[1], c[1]) for b in batches for i, c in zip(b[:4], b[4:], strict=True)}

    epoch0, epoch1 = pairing(keys[:2]), pairing(keys[2:])
    assert sorted(c for _, c in epoch0) == list(range(8))
    assert sorted(c for _, c in epoch1) == list(range(8))
    assert epoch0 != epoch1
    assert all(np.isfinite(trainer.loss_history))


@pytest.mark.parametrize("preset", ["seed-000-base-run", "seed-000-improved-run"])
def test_seed_000_preset_runs_end_to_end_in_bf16(preset, tmp_path, tiny_models, dataset,
                                                 monkeypatch):
    """The preset as written (bf16, prior preservation, its VAE kept in fp32) on the tiny models:
    only the size is cut (64 px, 4 steps, 2 class images) and the checkpoint and validation
    intervals brought inside 4 steps. Its VAE, stabilityai/sdxl-vae, is a force_upcast VAE: a
    tiny one of the same kind stands in."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    monkeypatch.setenv("STUDIO_CPU_PRECISION", "bf16")
    vae = shutil.copytree(tiny_models["base"] / "vae", tmp_path / "sdxl-vae")
    assert json.loads((vae / "config.json").read_text())["force_upcast"] is True
    run = tmp_path / "run"
    written = load_config(preset=preset)
    assert written.model.vae == "stabilityai/sdxl-vae" and written.train.mixed_precision == "bf16"
    cfg = load_config(preset=preset, overrides=[
        f"output_dir={run}", f"data.dataset={dataset}", f"model.base={tiny_models['base']}",
        f"model.vae={vae}", "data.resolution=64", "train.max_train_steps=4",
        "data.num_class_images=2", "checkpoints.every_n_steps=2", "validation.every_n_epochs=1",
        "validation.steps=2", "validation.num_images=1", "lora.rank=4"])
    trainer, autocast_dtypes = run_trainer(cfg, monkeypatch)
    assert_gpu_dtypes(trainer, torch.bfloat16, autocast_dtypes)
    assert trainer.m.vae_src == str(vae)
    ev = read_events(run)
    assert ev[-1]["status"] == "finished" and ev[-1]["step"] == 4
    assert len(list((run / "class_images").glob("*.png"))) == 2
    assert sorted(e["step"] for e in ev if e["type"] == "checkpoint") == [2, 4]
    # 3 photos, 2 class images: 3 steps per epoch, so samples after epoch 1 and at the end
    assert sorted({e["step"] for e in ev if e["type"] == "sample"}) == [3, 4]
    for fmt in EXPORT_FORMATS:
        assert (run / fmt.file_name).is_file(), fmt.file_name
    export_checkpoint(run, 2)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    lora = run / "pytorch_lora_weights.safetensors"
    pipe.load_lora_weights(str(run), weight_name=lora.name, adapter_name="seed")
    assert assert_every_lora_tensor_loaded(pipe, lora, "seed") > 0


@pytest.fixture(scope="module")
def base_with_latent_stats(tiny_models, tmp_path_factory):
    """The tiny base with latents_mean/latents_std in its VAE config (as some SDXL-family
    VAEs have)."""
    base = shutil.copytree(tiny_models["base"], tmp_path_factory.mktemp("stats") / "base")
    cfg_file = base / "vae" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(latents_mean=[0.3, -0.2, 0.1, 0.05], latents_std=[0.5, 2.0, 1.5, 0.8])
    cfg_file.write_text(json.dumps(cfg))
    return base


def test_training_latents_use_the_vae_latents_mean_and_std(base_with_latent_stats, dataset):
    """(latents - mean) * scaling_factor / std, as diffusers' SDXL scripts, is what gets noised."""
    import torch

    from studio.dataset.sources import load_dataset
    from studio.train.caches import Caches
    from studio.train.data import TrainDataset, collate
    from studio.train.loss import training_loss

    m = sdxl.load_models(ModelSection(base=str(base_with_latent_stats)), "cpu", torch.float32)
    caches = Caches(m, "cpu", train_text_encoder=False, keep_vae=True)
    ds = load_dataset(str(dataset))
    batch = collate([TrainDataset(ds.examples, ["a photo"] * 3, 64, "center", False, 1, 0).item(0)])
    noised = []
    add_noise = m.noise_scheduler.add_noise
    m.noise_scheduler.add_noise = lambda x, *a: (noised.append(x), add_noise(x, *a))[1]
    cfg = load_config(overrides=["data.resolution=64"])
    torch.manual_seed(0)
    training_loss(batch, m, caches, cfg, "cpu", torch.float32)
    torch.manual_seed(0)
    raw = caches.encode_latents(batch["pixel_values"]).sample()
    mean = torch.tensor([0.3, -0.2, 0.1, 0.05]).view(1, 4, 1, 1)
    std = torch.tensor([0.5, 2.0, 1.5, 0.8]).view(1, 4, 1, 1)
    torch.testing.assert_close(noised[0], (raw - mean) * m.vae.config.scaling_factor / std)


def test_sampling_decodes_with_the_vae_latents_mean_and_std(base_with_latent_stats):
    """The trainer's own decode (VAE in its dtype) gives the pipeline's image, which
    denormalises with latents_mean/latents_std."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(base_with_latent_stats)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a photo of person", num_inference_steps=2, height=64, width=64)
    ours = sdxl.pipeline_image(pipe, generator=torch.Generator().manual_seed(3), **kw)
    theirs = pipe(generator=torch.Generator().manual_seed(3), **kw).images[0]
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
