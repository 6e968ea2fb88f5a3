"""Write an SDXL pipeline saved in diffusers format as ONE .safetensors file in the original
(LDM/SGM) layout, the way community SDXL checkpoints are shipped.

    python tests/make_single_file.py BASE_DIR OUT.safetensors

Key mapping (Stability's original layout, as documented by diffusers' and ComfyUI's converters;
this is our own implementation):

* UNet -> ``model.diffusion_model.`` + the LDM module name (``studio.lora.sdxl_names.ldm_name``:
  input/middle/output blocks, ``in_layers``/``emb_layers``/``out_layers``/``skip_connection``,
  ``op``, ``time_embed``, ``label_emb``, ``out``) + the parameter name;
* VAE -> ``first_stage_model.``: ``encoder.down.I.block.J`` (``nin_shortcut``),
  ``encoder.down.I.downsample.conv``, ``mid.block_1/2``, ``mid.attn_1.norm/q/k/v/proj_out``
  (1x1 convolutions), ``decoder.up.(N-1-I)...upsample.conv``, ``norm_out``;
* CLIP-L -> ``conditioner.embedders.0.transformer.text_model.*`` (transformers' names);
* CLIP-G -> ``conditioner.embedders.1.model.*`` in OpenCLIP's layout: ``token_embedding``,
  ``positional_embedding``, ``transformer.resblocks.I.ln_1/attn.in_proj_weight (q;k;v)/
  attn.out_proj/ln_2/mlp.c_fc/mlp.c_proj``, ``ln_final``, ``text_projection`` (transposed).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    from studio.lora.sdxl_names import ldm_name

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    lpb = unet.config.layers_per_block
    with_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        ldm = ldm_name(module, lpb, with_attn.__contains__)
        if ldm is None:
            raise ValueError(f"no LDM name for UNet parameter {key}")
        out[f"model.diffusion_model.{ldm}.{param}"] = value
    return out


_VAE_RULES = (
    (r"(encoder)\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m, n: f"{m[1]}.down.{m[2]}.block.{m[3]}."),
    (r"(encoder)\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
     lambda m, n: f"{m[1]}.down.{m[2]}.downsample.conv."),
    (r"(decoder)\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
     lambda m, n: f"{m[1]}.up.{n - 1 - int(m[2])}.block.{m[3]}."),
    (r"(decoder)\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
     lambda m, n: f"{m[1]}.up.{n - 1 - int(m[2])}.upsample.conv."),
    (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
     lambda m, n: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.", lambda m, n: f"{m[1]}.mid.attn_1."),
)
_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.",
             "to_out.0.": "proj_out."}


def _vae(folder: Path) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    n = len(vae.config.block_out_channels)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        for pattern, build in _VAE_RULES:
            m = re.match(pattern, new)
            if m:
                new = build(m, n) + new[m.end():]
                if ".mid.attn_1." in new:
                    for a, b in _VAE_ATTN.items():
                        new = new.replace(".attn_1." + a, ".attn_1." + b)
                    if value.dim() == 2:  # LDM's attention projections are 1x1 convolutions
                        value = value[:, :, None, None]
                break
        out["first_stage_model." + new] = value
    return out


def _clip_l(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextModel

    te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    pre = "" if hasattr(te, "text_model") else "text_model."
    return {f"conditioner.embedders.0.transformer.{pre}{k}": v for k, v in te.state_dict().items()
            if not k.endswith("position_ids")}


def _clip_g(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import CLIPTextModelWithProjection

    te = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    sd = {k.removeprefix("text_model."): v for k, v in te.state_dict().items()}
    p = "conditioner.embedders.1.model."
    out = {p + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           p + "positional_embedding": sd["embeddings.position_embedding.weight"],
           p + "ln_final.weight": sd["final_layer_norm.weight"],
           p + "ln_final.bias": sd["final_layer_norm.bias"],
           p + "text_projection": sd["text_projection.weight"].T.contiguous()}
    for i in range(te.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [sd[f"{src}self_attn.{x}_proj.{part}"] for x in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{b}.{part}"] = sd[f"{src}{a}.{part}"]
    return out


def build_tiny_base_for_single_file(out: str | Path, seed: int = 0) -> Path:
    """A tiny SDXL pipeline (diffusers format) whose two text encoders differ in width, as
    SDXL's do (768 and 1280): diffusers' single-file loader tells CLIP-L from CLIP-G by their
    position-embedding width, so the usual tiny base (both 32 wide) cannot be one file."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from studio.tiny import build_sdxl_components

    parts = build_sdxl_components(seed)
    width = 48
    te1 = parts["text_encoder"].config
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(
        **{**{k: getattr(te1, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                           "vocab_size", "layer_norm_eps", "num_attention_heads",
                                           "max_position_embeddings", "hidden_act")},
           "hidden_size": width, "intermediate_size": 53, "num_hidden_layers": 2,
           "projection_dim": width}))
    cfg = dict(parts["unet"].config)
    cfg.update(cross_attention_dim=32 + width, projection_class_embeddings_input_dim=6 * 8 + width)
    torch.manual_seed(seed)
    parts["unet"] = UNet2DConditionModel.from_config(cfg)
    StableDiffusionXLPipeline(**parts).save_pretrained(out)
    return Path(out)


def make_single_file(base_dir: str | Path, out_file: str | Path) -> Path:
    from safetensors.torch import save_file

    base_dir, out_file = Path(base_dir), Path(out_file)
    sd = {**_unet(base_dir), **_vae(base_dir), **_clip_l(base_dir), **_clip_g(base_dir)}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_file))
    return out_file


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(make_single_file(sys.argv[1], sys.argv[2]))
