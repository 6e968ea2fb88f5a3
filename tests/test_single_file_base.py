"""Community SDXL bases as one .safetensors file in the original layout: generating from the file
gives the same image as the diffusers folder it came from, the conversion is made once, and a
LoRA trained on the file loads whole on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _train_support import fast_overrides, make_dataset
from make_single_file import build_tiny_base_for_single_file, make_single_file

from studio.generate.engine import Generator
from studio.generate.request import GenerationRequest


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Path]:
    """A tiny diffusers base whose encoders differ in width, and the same model as one file."""
    out = tmp_path_factory.mktemp("single")
    folder = build_tiny_base_for_single_file(out / "base")
    return {"folder": folder, "file": make_single_file(folder, out / "tiny-xl.safetensors")}


@pytest.fixture()
def offline_config(single, home, monkeypatch):
    """The SDXL configs the single-file loader needs, from a local folder (no network)."""
    monkeypatch.setenv("STUDIO_SINGLE_FILE_CONFIG", str(single["folder"]))


def pixels(base: Path, lora: str | None = None):
    gen = Generator(base=str(base), device="cpu")
    req = GenerationRequest(prompt="a photo of TOK person", seed=11, steps=2, width=64, height=64,
                            guidance=5.0, lora=lora)
    res = gen.generate(req)[0]
    return np.asarray(res.image), res.warnings


def test_the_file_gives_the_same_image_as_its_folder_and_converts_once(single, offline_config,
                                                                       monkeypatch):
    from diffusers import StableDiffusionXLPipeline

    from studio.singlefile import cached_folder, convert

    from_file, _ = pixels(single["file"])
    from_folder, _ = pixels(single["folder"])
    assert np.array_equal(from_file, from_folder)
    folder = cached_folder(single["file"])
    assert folder is not None and (folder / "unet" / "config.json").is_file()

    def never(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(StableDiffusionXLPipeline, "from_single_file", classmethod(never))
    assert convert(single["file"]) == folder


def test_a_file_that_is_not_an_sdxl_checkpoint_is_one_sentence(tmp_path, offline_config):
    from safetensors.torch import save_file

    from studio.singlefile import SingleFileError, convert

    bad = tmp_path / "not-sdxl.safetensors"
    import torch

    save_file({"foo.weight": torch.zeros(2)}, str(bad))
    with pytest.raises(SingleFileError, match="could not be converted") as err:
        convert(bad)
    assert "\n" not in str(err.value)


def test_training_on_the_file_writes_a_lora_that_loads_on_it(single, offline_config, tmp_path):
    from studio.config import load_config
    from studio.lora.verify import verify_lora
    from studio.train.loop import train

    ds = make_dataset(tmp_path / "me", n=2)
    run = tmp_path / "run"
    cfg = load_config(overrides=fast_overrides(run, ds, single["file"], steps=2) + [
        "train.learning_rate=1e-2"])
    assert train(cfg).status == "finished"
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        report = verify_lora(run / name, single["file"])
        assert report.ok, report.summary()
    plain, _ = pixels(single["file"])
    for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        image, warnings = pixels(single["file"], str(run / name))
        assert warnings == [] and np.abs(image.astype(int) - plain.astype(int)).max() > 0
