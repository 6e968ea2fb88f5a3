"""Generation core and CLI on the tiny models: determinism, refiner, LoRA formats and switching."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from lora_utils import make_mixed_spelling_lora, make_tiny_lora
from PIL import Image

from studio.generate.engine import Generator
from studio.generate.gallery import read_params
from studio.generate.request import GenerationError, GenerationRequest
from studio.generate.schedulers import SCHEDULERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen(tiny_models):
    return Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                     device="cpu")


@pytest.fixture(scope="module")
def lora_files(tiny_models, tmp_path_factory):
    return make_tiny_lora(tiny_models["base"], tmp_path_factory.mktemp("lora"), rank=4, alpha=8)


def pixels(gen: Generator, **kw) -> np.ndarray:
    req = GenerationRequest(prompt=kw.pop("prompt", "a photo of TOK person"), seed=kw.pop("seed", 1),
                            steps=kw.pop("steps", 2), width=64, height=64, **kw)
    return np.asarray(gen.generate(req)[0].image).astype(np.int16)


def test_cli_generate_writes_png_with_parameters_and_is_deterministic(tiny_models, tmp_path):
    def run(out: Path, *extra: str) -> list[Path]:
        cmd = [sys.executable, "-m", "studio", "generate", "--base", str(tiny_models["base"]),
               "--prompt", "a photo of TOK person", "--out", str(out), "--steps", "2",
               "--width", "64", "--height", "64", "--seed", "1", *extra]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return sorted(out.glob("*.png"))

    first = run(tmp_path / "a")
    second = run(tmp_path / "b")
    refined = run(tmp_path / "c", "--refiner", str(tiny_models["refiner"]))
    assert len(first) == len(second) == len(refined) == 1
    params = read_params(first[0])
    assert params["prompt"] == "a photo of TOK person" and params["seed"] == 1
    with Image.open(first[0]) as im:
        assert "Seed: 1" in im.text["parameters"]
        assert im.text["parameters"].startswith("a photo of TOK person")
        a = np.asarray(im.convert("RGB"))
    with Image.open(second[0]) as im:
        assert np.array_equal(a, np.asarray(im.convert("RGB")))
    rparams = read_params(refined[0])
    assert rparams["refiner"] == str(tiny_models["refiner"]) and rparams["refiner_switch"] == 0.8


def test_cli_missing_base_is_one_sentence_and_nonzero(tmp_path):
    res = subprocess.run([sys.executable, "-m", "studio", "generate", "--base",
                          str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and "does not exist" in err and "nope" in err


def test_same_seed_same_image_different_seed_differs(gen):
    a, b, c = pixels(gen, seed=7), pixels(gen, seed=7), pixels(gen, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batch_images_use_consecutive_seeds(gen):
    req = GenerationRequest(prompt="a photo of TOK person", seed=5, steps=2, width=64, height=64,
                            num_images=2)
    out = gen.generate(req)
    assert [o.params["seed"] for o in out] == [5, 6]
    assert np.array_equal(np.asarray(out[1].image).astype(np.int16), pixels(gen, seed=6))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_runs(gen, name):
    img = pixels(gen, scheduler=name, steps=3)
    assert img.shape == (64, 64, 3)


def test_refiner_changes_the_result(gen):
    assert not np.array_equal(pixels(gen), pixels(gen, refiner=True, refiner_switch=0.5, steps=4)
                              [:, :, :])


def test_lora_changes_output_scale_zero_equals_none_and_kohya_matches(gen, lora_files):
    base_pipe = gen.base_pipe()
    plain = pixels(gen)
    with_lora = pixels(gen, lora=str(lora_files["diffusers"]))
    assert np.abs(plain - with_lora).mean() > 1.0
    assert np.array_equal(pixels(gen, lora=str(lora_files["diffusers"]), lora_scale=0.0), plain)
    half = pixels(gen, lora=str(lora_files["diffusers"]), lora_scale=0.5)
    assert not np.array_equal(half, with_lora) and not np.array_equal(half, plain)
    # Kohya file (alpha != rank) gives the same image as the diffusers file.
    assert np.abs(pixels(gen, lora=str(lora_files["kohya"])) - with_lora).max() <= 1
    # Unloading returns to the plain output; the base pipeline was never reloaded.
    assert np.array_equal(pixels(gen), plain)
    assert gen.base_pipe() is base_pipe
    # Switching back to an already attached LoRA reuses its adapter.
    n = len(gen.loaded_adapters())
    assert np.array_equal(pixels(gen, lora=str(lora_files["diffusers"])), with_lora)
    assert len(gen.loaded_adapters()) == n


def test_lora_folder_resolves_to_its_weights_file(gen, lora_files):
    folder = lora_files["diffusers"].parent
    assert np.array_equal(pixels(gen, lora=str(folder)),
                          pixels(gen, lora=str(lora_files["diffusers"])))


def test_lora_with_mixed_key_spellings_loads_whole(gen, tiny_models, tmp_path, monkeypatch):
    """A LoRA saved the way diffusers' SDXL scripts save non-attention targets (attention keys
    ``lora.down``, convs ``lora_A``) gives the same image as the same weights spelled one way,
    from a repaired copy made once; the user's file is left as it was."""
    from safetensors import safe_open

    from studio.lora.keys import mixed_spelling

    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "home"))
    files = make_mixed_spelling_lora(tiny_models["base"], tmp_path / "loras")
    with safe_open(str(files["mixed"]), "pt") as fh:
        assert mixed_spelling(fh.keys())
    before = files["mixed"].read_bytes()
    clean = pixels(gen, lora=str(files["clean"]))
    assert np.abs(clean - pixels(gen)).mean() > 1.0
    assert np.abs(pixels(gen, lora=str(files["mixed"])) - clean).max() <= 1
    repaired = list((tmp_path / "home" / "models" / "lora-repaired").rglob("*.safetensors"))
    assert len(repaired) == 1 and files["mixed"].read_bytes() == before
    with safe_open(str(repaired[0]), "pt") as fh:
        assert not mixed_spelling(fh.keys()) and "lora_adapter_metadata" in fh.metadata()


@pytest.mark.parametrize("kw, words", [
    ({"prompt": "  "}, "prompt is empty"),
    ({"width": 100}, "multiple of 8"),
    ({"steps": 0}, "Steps"),
    ({"scheduler": "Nope"}, "Unknown scheduler"),
    ({"refiner": True, "refiner_switch": 1.5}, "Refiner switch"),
])
def test_bad_requests_are_one_sentence(kw, words):
    req = GenerationRequest(**{"prompt": "x", **kw})
    with pytest.raises(GenerationError, match=words):
        req.validate()


def test_missing_lora_file_is_clear(gen, tmp_path):
    from studio.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="does not exist"):
        pixels(gen, lora=str(tmp_path / "missing.safetensors"))


def test_generators_sharing_a_pipeline_do_not_leak_loras(gen, tiny_models, lora_files):
    plain = pixels(gen)
    other = Generator(base=str(tiny_models["base"]), device="cpu")
    assert other.base_pipe() is gen.base_pipe()  # the cached pipeline is shared
    assert not np.array_equal(pixels(other, lora=str(lora_files["diffusers"])), plain)
    assert np.array_equal(pixels(gen), plain)


def _own_pipelines(tiny_models):
    """A base and a refiner sharing text_encoder_2 and the VAE (as load_refiner does), built
    for one test: not the cached pipelines other tests share."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"])
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_models["refiner"], text_encoder_2=base.text_encoder_2, vae=base.vae)
    for p in (base, refiner):
        p.set_progress_bar_config(disable=True)
    return base, refiner


def test_each_pipeline_scheduler_comes_from_its_own_config(tiny_models):
    """A request's scheduler is built from the model's scheduler config as loaded, not from the
    scheduler a previous request left in the (shared) pipeline: UniPC rewrites solver_type, so
    DPM++ after UniPC used to lose a model's solver_type=heun in the refiner."""
    from diffusers import DPMSolverMultistepScheduler

    base, refiner = _own_pipelines(tiny_models)
    for p in (base, refiner):
        p.scheduler = DPMSolverMultistepScheduler.from_config(p.scheduler.config, solver_type="heun")
    g = Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                  device="cpu", base_pipe=base, refiner_pipe=refiner)
    refined = dict(refiner=True, refiner_switch=0.5, steps=4)
    first = pixels(g, scheduler="DPM++ 2M", **refined)
    pixels(g, scheduler="UniPC", **refined)
    again = pixels(g, scheduler="DPM++ 2M", **refined)
    assert base.scheduler.config.solver_type == refiner.scheduler.config.solver_type == "heun"
    assert np.array_equal(again, first)
    other = Generator(base=str(tiny_models["base"]), device="cpu", base_pipe=base)
    pixels(other, scheduler="UniPC")  # a second Generator over the same pipelines
    assert np.array_equal(pixels(g, scheduler="DPM++ 2M", **refined), first)


def test_text_encoder_2_lora_conditions_the_base_pass_not_the_refiner(tiny_models, tmp_path):
    """The refiner shares text_encoder_2 with the base; a LoRA on that encoder conditions the
    base pass only, the refiner sees the plain encoder's embeddings, and the LoRA is on again
    for the next base pass."""
    import torch
    from lora_utils import make_tiny_text_encoder_2_lora

    lora = make_tiny_text_encoder_2_lora(tiny_models["base"], tmp_path / "te2")
    base, refiner = _own_pipelines(tiny_models)
    g = Generator(base=str(tiny_models["base"]), refiner=str(tiny_models["refiner"]),
                  device="cpu", base_pipe=base, refiner_pipe=refiner)
    seen: dict[str, list] = {"base": [], "refiner": []}
    for name, p in (("base", base), ("refiner", refiner)):
        p.unet.register_forward_pre_hook(
            lambda _m, _a, kw, n=name: seen[n].append(kw["encoder_hidden_states"].clone()),
            with_kwargs=True)

    def embeddings(**kw) -> dict[str, torch.Tensor]:
        for v in seen.values():
            v.clear()
        pixels(g, refiner=True, refiner_switch=0.5, steps=4, **kw)
        return {k: torch.cat(v) for k, v in seen.items()}

    plain = embeddings()
    with_lora = embeddings(lora=str(lora))
    assert not torch.equal(with_lora["base"], plain["base"])
    assert torch.equal(with_lora["refiner"], plain["refiner"])
    assert torch.equal(embeddings(lora=str(lora))["base"], with_lora["base"])
