"""Build real LoRA files for the tiny SDXL UNet (diffusers and Kohya formats) for tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_lora(base_dir: Path, out_dir: Path, rank: int = 4, alpha: float = 8.0,
                   seed: int = 0, magnitude: float = 0.5) -> dict[str, Path]:
    """Attach a LoRA with non-zero random weights to the tiny UNet and save it in both formats.

    Returns {"diffusers": file, "kohya": file}. The Kohya file gets the adapter's real alpha
    (diffusers' converter writes alpha = rank).
    """
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * magnitude)
    peft_sd = get_peft_model_state_dict(unet)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The adapter metadata (rank, alpha, targets) keeps alpha != rank correct on load.
    StableDiffusionXLPipeline.save_lora_weights(
        out_dir, unet_lora_layers=convert_state_dict_to_diffusers(peft_sd),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(), safe_serialization=True)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    kohya = {k: (torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous())
             for k, v in kohya.items()}
    kohya_file = out_dir / "lora_kohya.safetensors"
    save_file(kohya, str(kohya_file))
    return {"diffusers": out_dir / "pytorch_lora_weights.safetensors", "kohya": kohya_file}


_PARAM = ((".lora_A.weight", "lora_A"), (".lora_B.weight", "lora_B"),
          (".lora.down.weight", "lora_A"), (".lora.up.weight", "lora_B"),
          (".lora_linear_layer.down.weight", "lora_A"), (".lora_linear_layer.up.weight", "lora_B"),
          (".lora_magnitude_vector", "lora_magnitude_vector"),  # DoRA, both spellings
          (".lora_magnitude_vector.weight", "lora_magnitude_vector"))


def assert_every_lora_tensor_loaded(pipe, lora_file: Path, adapter: str) -> int:
    """Every LoRA matrix (and DoRA magnitude) in ``lora_file`` must sit, unchanged, in the
    pipeline's peft layers after ``load_lora_weights(..., adapter_name=adapter)``: diffusers
    skips keys it does not understand with only a warning, so "the image changed" alone does
    not prove a whole load."""
    from safetensors.torch import load_file

    sd = load_file(str(lora_file))
    checked, missing = 0, []
    for key, value in sd.items():
        component, _, rest = key.partition(".")
        match = next(((sfx, prm) for sfx, prm in _PARAM if rest.endswith(sfx)), None)
        if match is None:
            continue
        module_path, param = rest[: -len(match[0])], match[1]
        module = getattr(pipe, component).get_submodule(module_path)
        layers = getattr(module, param, None)
        if layers is None or adapter not in layers:
            missing.append(key)
            continue
        assert torch.equal(layers[adapter].weight.detach().cpu().float().reshape(value.shape),
                           value.float()), key
        checked += 1
    assert not missing, f"{len(missing)} LoRA tensors were not loaded, e.g. {missing[:3]}"
    return checked


def make_mixed_spelling_lora(base_dir: Path, out_dir: Path, seed: int = 3) -> dict[str, Path]:
    """The same random LoRA (attention + resnet convs) saved twice: as diffusers' own SDXL
    scripts save it (``convert_state_dict_to_diffusers``: attention keys become ``lora.down``,
    the convs stay ``lora_A``) and with peft's spelling only. Returns {"mixed", "clean"}."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0", "conv1"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_sd = get_peft_model_state_dict(unet)
    meta = unet.peft_config["default"].to_dict()
    out = {}
    for kind, sd in (("mixed", convert_state_dict_to_diffusers(peft_sd)), ("clean", peft_sd)):
        (out_dir / kind).mkdir(parents=True, exist_ok=True)
        StableDiffusionXLPipeline.save_lora_weights(out_dir / kind, unet_lora_layers=sd,
                                                    unet_lora_adapter_metadata=meta)
        out[kind] = out_dir / kind / "pytorch_lora_weights.safetensors"
    return out


def make_tiny_text_encoder_2_lora(base_dir: Path, out_dir: Path, seed: int = 5) -> Path:
    """A LoRA with random non-zero weights on the tiny base's second text encoder only, written
    by the trainer's own writer; returns the file."""
    from peft import LoraConfig
    from transformers import CLIPTextModelWithProjection

    from studio.train.sdxl import save_lora

    te2 = CLIPTextModelWithProjection.from_pretrained(base_dir / "text_encoder_2")
    te2.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                               target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in te2.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    out_dir.mkdir(parents=True, exist_ok=True)
    return save_lora(out_dir, {"text_encoder_2": te2})
