"""Model sources, overrides and one-sentence loading errors."""

from __future__ import annotations

import pytest

from studio import models
from studio.models import ModelLoadError, explain_load_error, model_source


def test_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("STUDIO_BASE_MODEL", raising=False)
    assert model_source("base") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert model_source("captioner") == "Salesforce/blip-image-captioning-large"
    assert model_source("refiner") == "stabilityai/stable-diffusion-xl-refiner-1.0"
    monkeypatch.setenv("STUDIO_BASE_MODEL", "/models/base")
    assert model_source("base") == "/models/base"
    assert model_source("base", "other/id") == "other/id"


def test_vae_choice():
    default = models.ROLES["base"].default
    assert models.vae_source(default) == "madebyollin/sdxl-vae-fp16-fix"
    assert models.vae_source("/my/base") is None
    assert models.vae_source(default, "base") is None
    assert models.vae_source("/my/base", "me/vae") == "me/vae"


@pytest.mark.parametrize("s, expected", [("owner/name", False), ("name", False),
                                          ("/abs/path", True), ("./rel", True),
                                          ("a/b/c", True), ("~/x", True)])
def test_looks_like_path(s, expected):
    assert models.looks_like_path(s) is expected


def test_missing_folder_message(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        models.load_sdxl_pipeline(str(tmp_path / "nope"), device="cpu")
    msg = str(e.value)
    assert "SDXL base model folder" in msg and "does not exist" in msg and "\n" not in msg


def test_folder_without_model_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as e:
        models.load_sdxl_pipeline(str(tmp_path / "empty"), device="cpu")
    assert "not a valid SDXL base model" in str(e.value)


def test_hub_id_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as e:
        models.load_captioner("someone/not-cached-model", device="cpu")
    msg = str(e.value)
    assert "BLIP captioning model" in msg and "STUDIO_CAPTION_MODEL" in msg and "\n" not in msg


@pytest.mark.parametrize("exc, words", [
    (RuntimeError("CUDA out of memory. Tried to allocate"), "Not enough GPU memory"),
    (OSError("401 Client Error: gated repo"), "gated or private"),
    (OSError("We couldn't connect to 'https://huggingface.co'"), "Could not download"),
])
def test_error_classes(exc, words):
    assert words in str(explain_load_error("base", "org/model", exc))


def test_device_and_dtype(monkeypatch):
    import torch

    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert models.pick_device() == "cpu"
    assert models.pick_dtype("cpu") == torch.float32
    assert models.pick_dtype("cpu", "bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError):
        models.pick_dtype("cpu", "int3")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            models.pick_device("cuda")


def test_models_load_once(tiny_models):
    a = models.load_sdxl_pipeline(str(tiny_models["base"]), device="cpu")
    b = models.load_sdxl_pipeline(str(tiny_models["base"]), device="cpu")
    assert a is b
    proc, model = models.load_captioner(str(tiny_models["captioner"]), device="cpu")
    assert models.load_captioner(str(tiny_models["captioner"]), device="cpu")[1] is model
