"""Small LoRA files for the tiny SDXL base in the layouts that circulate, with random non-zero
weights: kohya sd-scripts (LDM names, alpha, SDXL metadata), diffusers/peft, diffusers' older
``lora.down`` spelling, text-encoder keys, ``dora_scale``, a LyCORIS LoCon with convolutions."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from studio.lora.kohya import KOHYA_METADATA

RANK, ALPHA = 4, 8.0
ATTN = ("to_q", "to_k", "to_v", "to_out.0")
LINEAR = ATTN + ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
CONVS = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
TE_PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
            "mlp.fc1", "mlp.fc2")


def _names(base: Path):
    from studio.lora.sdxl_names import from_folder

    return from_folder(base)


def _pair(layer, g, rank=RANK, scale=0.3):
    if layer.kind == "conv":
        down = torch.randn(rank, layer.fan_in, layer.kernel, layer.kernel, generator=g) * scale
        up = torch.randn(layer.fan_out, rank, 1, 1, generator=g) * scale
    else:
        down = torch.randn(rank, layer.fan_in, generator=g) * scale
        up = torch.randn(layer.fan_out, rank, generator=g) * scale
    return down, up


def unet_modules(base: Path, targets=ATTN) -> dict:
    return {n: layer for n, layer in _names(base).modules["unet"].items() if n.endswith(targets)}


def kohya_file(base: Path, path: Path, *, targets=ATTN, text_encoders=False, dora=False,
               metadata: dict | None = None, seed: int = 0, alpha: float = ALPHA) -> Path:
    """kohya sd-scripts' SDXL layout: ``lora_unet_<LDM name>``, ``lora_te1_``/``lora_te2_``,
    ``.alpha``, optional ``dora_scale`` per output row ``(out, 1...)`` (LyCORIS, peft)."""
    names = _names(base)
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    mods = [("lora_unet_" + names.ldm[n].replace(".", "_"), layer)
            for n, layer in names.modules["unet"].items() if n.endswith(targets)]
    if text_encoders:
        for comp, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
            mods += [(prefix + n.replace(".", "_"), layer)
                     for n, layer in names.modules[comp].items() if n.endswith(TE_PARTS)]
    for name, layer in mods:
        out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = _pair(layer, g)
        out[f"{name}.alpha"] = torch.tensor(alpha)
        if dora:
            shape = (layer.fan_out, 1) if layer.kind == "linear" else (layer.fan_out, 1, 1, 1)
            out[f"{name}.dora_scale"] = torch.rand(shape, generator=g) + 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=dict(KOHYA_METADATA if metadata is None else metadata))
    return path


def tiny_kohya_ldm(base: Path, path: Path, metadata: dict | None = None) -> Path:
    """A kohya-layout LoRA on the UNet's attention and both text encoders (rank 4, alpha 8)."""
    return kohya_file(base, path, text_encoders=True, metadata=metadata)


def locon_file(base: Path, path: Path, seed: int = 1) -> Path:
    """A LyCORIS LoCon: attention plus the resnets' 3x3 and 1x1 convolutions, the down- and
    upsamplers (kohya LDM names: in_layers_2, out_layers_3, skip_connection, op, conv)."""
    return kohya_file(base, path, targets=ATTN + CONVS, seed=seed)


def _peft_unet(base: Path, seed: int, targets=LINEAR):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return unet


def diffusers_peft_file(base: Path, folder: Path, seed: int = 2) -> Path:
    """diffusers' layout with peft's names (``unet.X.lora_A.weight``) and adapter metadata."""
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    unet = _peft_unet(base, seed)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return folder / "pytorch_lora_weights.safetensors"


def old_diffusers_file(base: Path, path: Path, seed: int = 3) -> Path:
    """diffusers' older spelling (``unet.X.to_q.lora.down.weight``), no adapter metadata: the
    attention projections only, as diffusers' earlier training scripts saved them."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = _peft_unet(base, seed, ATTN)
    sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    assert all(".lora.down.weight" in k or ".lora.up.weight" in k for k in sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"unet.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    return path
