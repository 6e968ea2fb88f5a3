"""Every module a LoRA can patch in SDXL, from the model configs alone (meta device, no weights).

:func:`sdxl_names` builds the UNet and both CLIP text encoders from their configs on PyTorch's
meta device and lists their Linear and Conv2d modules with their shapes, so the full-size
model costs no memory. Names are diffusers' (``down_blocks.1.attentions.0...``) for the UNet and
``text_model.encoder.layers.N...`` for the text encoders (the spelling with transformers'
``text_model`` wrapper, whatever the installed transformers does).

:attr:`SDXLNames.ldm` maps each UNet module to its name in the original (LDM/SGM) layout that
Stability's checkpoints, kohya sd-scripts, ComfyUI and A1111 use (``input_blocks.4.1...``). The
mapping follows the published block structure: input block ``1 + b*(L+1) + i`` holds down block
``b``'s resnet ``i`` (sub-module 0) and its transformer (sub-module 1), input block
``(b+1)*(L+1)`` its downsampler (``0.op``); the middle block is resnet 0, transformer, resnet 1;
output block ``b*(L+1) + i`` holds up block ``b``'s resnet ``i``, its transformer, and after the
last resnet the upsampler (``conv``) as the next sub-module. L is ``layers_per_block``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

# diffusers resnet sub-module -> LDM ResBlock sub-module
RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_LDM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


@dataclass(frozen=True)
class Layer:
    """A patchable module: ``linear`` or ``conv``, its input and output features, and a
    convolution's kernel size."""

    kind: str
    fan_in: int
    fan_out: int
    kernel: int = 1


@dataclass
class SDXLNames:
    """The patchable modules of one SDXL base, by component, and the UNet's LDM names."""

    modules: dict[str, dict[str, Layer]]
    ldm: dict[str, str] = field(default_factory=dict)  # diffusers UNet module -> LDM module
    label: str = "SDXL"

    @property
    def text_layers(self) -> dict[str, int]:
        """Number of encoder layers of each text encoder."""
        out = {}
        for comp in COMPONENTS[1:]:
            idx = {int(m.group(1)) for n in self.modules.get(comp, {})
                   if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", n))}
            out[comp] = max(idx) + 1 if idx else 0
        return out


def _layers(model, prefix: str = "") -> dict[str, Layer]:
    import torch

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            out[prefix + name] = Layer("linear", mod.in_features, mod.out_features)
        elif isinstance(mod, torch.nn.Conv2d):
            out[prefix + name] = Layer("conv", mod.in_channels, mod.out_channels,
                                       int(mod.kernel_size[0]))
    return out


def ldm_name(name: str, layers_per_block: int = 2, up_has_attn=lambda block: True) -> str | None:
    """The LDM name of the diffusers UNet module ``name`` (None: no LDM counterpart).
    ``up_has_attn(b)``: whether up block ``b`` has transformers, which moves its upsampler to
    sub-module 2; in SDXL every up block with an upsampler has them."""
    n = layers_per_block + 1
    if name in TOP_LDM:
        return TOP_LDM[name]
    m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$", name)
    if m:
        down, b, i, rest = m.group(1) == "down_blocks", int(m.group(2)), int(m.group(4)), m.group(5)
        where = f"input_blocks.{1 + b * n + i}" if down else f"output_blocks.{b * n + i}"
        if m.group(3) == "attentions":
            return f"{where}.1.{rest}"
        return f"{where}.0.{RESNET_LDM[rest]}" if rest in RESNET_LDM else None
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv$", name):
        return f"input_blocks.{(int(m.group(1)) + 1) * n}.0.op"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv$", name):
        b = int(m.group(1))
        return f"output_blocks.{b * n + n - 1}.{2 if up_has_attn(b) else 1}.conv"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", name):
        if m.group(1) == "attentions":
            return f"middle_block.1.{m.group(3)}"
        sub = RESNET_LDM.get(m.group(3))
        return f"middle_block.{2 * int(m.group(2))}.{sub}" if sub else None
    return None


def unet_ldm_names(names: list[str], layers_per_block: int) -> dict[str, str]:
    """diffusers UNet module name -> LDM module name for every module that has one."""
    with_attn = {int(m.group(1)) for x in names
                 if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", x))}
    out = {}
    for name in names:
        ldm = ldm_name(name, layers_per_block, with_attn.__contains__)
        if ldm is not None:
            out[name] = ldm
    return out


@lru_cache(maxsize=8)
def _build(unet_json: str, te1_json: str, te2_json: str, label: str) -> SDXLNames:
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg = json.loads(unet_json)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        te1 = CLIPTextModel(CLIPTextConfig(**json.loads(te1_json)))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**json.loads(te2_json)))
    modules = {"unet": _layers(unet),
               "text_encoder": _layers(te1, "" if hasattr(te1, "text_model") else "text_model."),
               "text_encoder_2": _layers(te2, "" if hasattr(te2, "text_model") else "text_model.")}
    ldm = unet_ldm_names(list(modules["unet"]), int(unet_cfg.get("layers_per_block", 2)))
    return SDXLNames(modules, ldm, label)


def _clean(cfg: dict) -> str:
    return json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, sort_keys=True)


def full_size() -> SDXLNames:
    """The full-size SDXL base 1.0 (bundled configs)."""
    from studio.lora import sdxl_configs as c

    return _build(_clean(c.UNET), _clean(c.TEXT_ENCODER), _clean(c.TEXT_ENCODER_2),
                  "SDXL base 1.0")


def from_folder(folder: str | Path) -> SDXLNames:
    """The SDXL base saved in diffusers format in ``folder`` (its config files only)."""
    folder = Path(folder)

    def read(sub: str, fname: str = "config.json") -> dict:
        data = json.loads((folder / sub / fname).read_text(encoding="utf-8"))
        return {k: v for k, v in data.items()
                if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}

    return _build(_clean(read("unet")), _clean(read("text_encoder")),
                  _clean(read("text_encoder_2")), folder.name)


def sdxl_names(base: str | Path | None = None) -> SDXLNames:
    """The modules of ``base`` when it is a local diffusers folder (or a single-file base already
    converted, :mod:`studio.singlefile`), else of full-size SDXL."""
    if base is not None:
        from studio.singlefile import cached_folder, is_single_file

        p = Path(str(base)).expanduser()
        if is_single_file(p):
            p = cached_folder(p) or p
        if (p / "unet" / "config.json").is_file() and (p / "text_encoder_2").is_dir():
            return from_folder(p)
    return full_size()
