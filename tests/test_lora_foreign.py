"""LoRAs from other trainers load completely in Generate: kohya sd-scripts (LDM names),
diffusers/peft, diffusers' older lora.down spelling, text-encoder keys, dora_scale, a LyCORIS
LoCon with convolutions. Every module of the file holds the adapter and the image changes; a file
that cannot be applied fully says what was skipped in one sentence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lora_layouts import (
    ALPHA,
    RANK,
    diffusers_peft_file,
    kohya_file,
    locon_file,
    old_diffusers_file,
    tiny_kohya_ldm,
)
from safetensors.torch import load_file, save_file

from studio.generate.engine import Generator
from studio.generate.request import GenerationRequest

pytestmark = pytest.mark.usefixtures("home")  # converted copies go to a test workspace


@pytest.fixture(scope="module")
def gen(tiny_models):
    return Generator(base=str(tiny_models["base"]), device="cpu")


@pytest.fixture(scope="module")
def layouts(tiny_models, tmp_path_factory) -> dict[str, Path]:
    base, out = tiny_models["base"], tmp_path_factory.mktemp("layouts")
    return {
        "kohya sd-scripts (LDM names)": kohya_file(base, out / "kohya.safetensors"),
        "diffusers/peft": diffusers_peft_file(base, out / "peft"),
        "diffusers lora.down": old_diffusers_file(base, out / "old.safetensors"),
        "text-encoder keys": tiny_kohya_ldm(base, out / "te.safetensors"),
        "dora_scale": kohya_file(base, out / "dora.safetensors", dora=True, seed=4),
        "LyCORIS LoCon (conv)": locon_file(base, out / "locon.safetensors"),
    }


def run(gen: Generator, lora: str | None, scale: float = 1.0):
    req = GenerationRequest(prompt="a photo of TOK person", seed=3, steps=2, width=64, height=64,
                            guidance=5.0, lora=lora, lora_scale=scale)
    res = gen.generate(req)[0]
    return np.asarray(res.image).astype(np.int16), res.warnings


def _adapter_layers(pipe, adapter: str) -> int:
    return sum(1 for comp in ("unet", "text_encoder", "text_encoder_2")
               for mod in getattr(pipe, comp).modules()
               if adapter in getattr(mod, "lora_A", {}))


def _modules_in_file(path: Path) -> int:
    keys = load_file(str(path))
    ups = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight")
    return sum(1 for k in keys if k.endswith(ups))


@pytest.mark.parametrize("layout", ["kohya sd-scripts (LDM names)", "diffusers/peft",
                                    "diffusers lora.down", "text-encoder keys", "dora_scale",
                                    "LyCORIS LoCon (conv)"])
def test_a_foreign_layout_loads_completely_and_changes_the_image(gen, layouts, layout):
    plain, _ = run(gen, None)
    image, warnings = run(gen, str(layouts[layout]))
    assert warnings == [], warnings
    assert np.abs(image - plain).max() > 5
    pipe = gen.base_pipe()
    adapter = gen.loaded_adapters()[-1]
    assert _adapter_layers(pipe, adapter) == _modules_in_file(layouts[layout])
    if layout == "dora_scale":
        layers = [m for m in pipe.unet.modules() if adapter in getattr(m, "lora_A", {})]
        assert all(adapter in m.lora_magnitude_vector for m in layers)


def test_kohya_alpha_and_dora_give_the_same_image_as_the_diffusers_file(gen, tiny_models,
                                                                        tmp_path):
    """The scale alpha / rank and the DoRA magnitudes survive the conversion exactly."""
    from studio.lora.kohya import write_kohya

    peft = diffusers_peft_file(tiny_models["base"], tmp_path / "p", seed=7)
    kohya = write_kohya(peft, tmp_path / "k.safetensors")
    assert float(load_file(str(kohya))[next(k for k in load_file(str(kohya))
                                            if k.endswith(".alpha"))]) == ALPHA != RANK
    a, _ = run(gen, str(peft))
    b, warnings = run(gen, str(kohya))
    assert warnings == [] and np.abs(a - b).max() <= 1


def test_a_partial_file_names_what_was_skipped(gen, tiny_models, tmp_path):
    path = kohya_file(tiny_models["base"], tmp_path / "odd.safetensors", seed=5)
    tensors = load_file(str(path))
    tensors["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(8, 4)
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0",
                                            "modelspec.architecture":
                                                "stable-diffusion-xl-v1-base/lora"})
    plain, _ = run(gen, None)
    image, warnings = run(gen, str(path))
    assert np.abs(image - plain).max() > 5  # the rest is applied
    partial = [w for w in warnings if "applied only in part" in w]
    assert len(partial) == 1 and "lora_unet_not_a_layer" in partial[0]
    assert "\n" not in partial[0] and partial[0].endswith(".")


def test_a_per_input_dora_scale_is_skipped_by_name_and_missing_metadata_warns(gen, tiny_models,
                                                                              tmp_path):
    path = kohya_file(tiny_models["base"], tmp_path / "col.safetensors", dora=True, seed=6,
                      metadata={})
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith(".dora_scale"))
    fan_in = tensors[key.replace("dora_scale", "lora_down.weight")].shape[1]
    tensors[key] = torch.rand(1, fan_in) + 0.5  # normalised per input column (A1111's DoRA)
    save_file(tensors, str(path))
    _, warnings = run(gen, str(path))
    assert any("SDXL metadata missing" in w for w in warnings)
    partial = [w for w in warnings if "applied only in part" in w]
    assert len(partial) == 1 and key.split(".")[0] in partial[0]
