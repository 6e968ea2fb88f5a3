"""How ComfyUI, AUTOMATIC1111/Forge and diffusers find the layer of each key of a LoRA file.

Our own reimplementation of the documented key rules of each loader (no code of theirs):

* **ComfyUI** (``comfy/lora.py``): a module name matches when it is ``lora_unet_`` + the LDM
  name with dots as underscores (``input_blocks_4_1_...``), ``lora_unet_`` + the diffusers name
  the same way, the old diffusers attention-processor spelling (``unet.`` ... ``.processor.to_q``),
  or, for the text encoders, ``lora_te1_``/``lora_te2_text_model_encoder_layers_N_`` +
  ``self_attn_q_proj|k_proj|v_proj|out_proj`` or ``mlp_fc1|fc2`` (and ``text_encoder(_2).text_model...``).
  Pairs: ``.lora_up.weight``/``.lora_down.weight``, ``.lora_B.weight``/``.lora_A.weight``,
  ``.lora.up.weight``, ``_lora.up.weight``, ``.lora_linear_layer.up.weight``; ``.alpha`` (scale
  alpha / rank) and ``.dora_scale`` go with a matched pair. Anything else is "lora key not loaded".
* **A1111/Forge** (``extensions-builtin/Lora``): the module name is the key up to its first dot;
  diffusers-spelled UNet names are converted with SD 1.x block arithmetic, then ``lora_unet``
  becomes ``diffusion_model`` in the LDM layout and ``lora_te1_text_model`` becomes
  ``0_transformer_text_model``; ``lora_te2_`` becomes ``1_model_transformer_resblocks_N_`` with
  ``mlp_fc1`` -> ``mlp_c_fc``, ``mlp_fc2`` -> ``mlp_c_proj``, ``self_attn`` -> ``attn`` (q/k/v
  projections land on the fused attention). A module needs ``lora_up.weight`` and
  ``lora_down.weight``; unmatched keys are dropped with a debug log line only.
* **diffusers**: diffusers' own ``lora_state_dict`` conversion, then every converted key must name
  a module of the model (peft skips the others with a warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from studio.errors import first_line
from studio.lora.sdxl_names import Layer, SDXLNames

PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
         (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
         (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
         (".lora_B", ".lora_A"))
EXTRAS = (".alpha", ".dora_scale", ".lora_mid.weight")
CLIP_PARTS = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
              "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2"}
Canon = tuple[str, str]  # (component, module name in SDXLNames)


@dataclass
class TargetResult:
    """What one loader makes of a file: how many of its keys it applies, the first it does not."""

    target: str
    total: int
    matched: int = 0
    unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.matched == self.total and self.error is None


def _module_name(key: str) -> str:
    for sfx in [s for pair in PAIRS for s in pair] + list(EXTRAS):
        if key.endswith(sfx):
            return key[: -len(sfx)]
    return key


def shape_ok(layer: Layer, down, up) -> bool:
    if down is None or up is None or len(down.shape) < 2 or len(up.shape) < 2:
        return False
    if len(down.shape) == 4 and (layer.kind != "conv" or int(down.shape[2]) != layer.kernel):
        return False
    return int(down.shape[1]) == layer.fan_in and int(up.shape[0]) == layer.fan_out \
        and int(up.shape[1]) == int(down.shape[0])


def _apply(target: str, tensors: dict[str, Any], names: SDXLNames,
           key_map: dict[str, Canon], pairs=PAIRS, extras=EXTRAS) -> TargetResult:
    """Keys of ``tensors`` that ``key_map`` (module name -> layer) resolves with ``pairs``."""
    loaded: set[str] = set()
    for key in tensors:
        for up_sfx, down_sfx in pairs:
            if not key.endswith(up_sfx):
                continue
            module = key[: -len(up_sfx)]
            canon = key_map.get(module)
            down = module + down_sfx
            if canon is None or down not in tensors:
                continue
            layer = names.modules[canon[0]].get(canon[1])
            if layer is None or not shape_ok(layer, tensors[down], tensors[key]):
                continue
            loaded |= {key, down} | {module + e for e in extras if module + e in tensors}
            break
    flat = {k for k in loaded if k.endswith(".dora_scale") and len(tensors[k].shape) < 2}
    loaded -= flat
    # keys of modules the loader does not know first: the cause, before their orphaned partners
    missed = sorted((k for k in tensors if k not in loaded),
                    key=lambda k: _module_name(k) in key_map)
    res = TargetResult(target, len(tensors), len(loaded), missed)
    if flat:
        res.notes.append(f"{len(flat)} dora_scale tensors are 1-D; {target} needs the weight's "
                         "dimensions, e.g. (out, 1)")
    return res


# ---- ComfyUI ---------------------------------------------------------------------------------
def comfyui_key_map(names: SDXLNames) -> dict[str, Canon]:
    out: dict[str, Canon] = {}
    for diff, ldm in names.ldm.items():
        canon = ("unet", diff)
        out["lora_unet_" + ldm.replace(".", "_")] = canon
        out["diffusion_model." + ldm] = canon
        out["lora_unet_" + diff.replace(".", "_")] = canon
        out["lycoris_" + diff.replace(".", "_")] = canon
        old = diff.replace(".to_", ".processor.to_")
        old = old[:-2] if old.endswith(".to_out.0") else old
        out[old] = out["unet." + old] = canon
    for comp, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        for i in range(names.text_layers[comp]):
            for part, flat in CLIP_PARTS.items():
                canon = (comp, f"text_model.encoder.layers.{i}.{part}")
                out[f"{prefix}text_model_encoder_layers_{i}_{flat}"] = canon
                out[f"{comp}.text_model.encoder.layers.{i}.{part}"] = canon
                if comp == "text_encoder":
                    out[f"lora_te_text_model_encoder_layers_{i}_{flat}"] = canon
    out["lora_te2_text_projection"] = ("text_encoder_2", "text_projection")
    return out


def comfyui(tensors: dict[str, Any], names: SDXLNames) -> TargetResult:
    return _apply("ComfyUI", tensors, names, comfyui_key_map(names))


# ---- A1111 / Forge ---------------------------------------------------------------------------
_RESNET_A1111 = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0",
                 "norm2": "out_layers_0", "time_emb_proj": "emb_layers_1",
                 "conv_shortcut": "skip_connection"}
_MHA = "<attn>"


def a1111_layer_map(names: SDXLNames) -> dict[str, Canon]:
    """A1111's SDXL ``network_layer_mapping`` names -> layer."""
    out: dict[str, Canon] = {"diffusion_model_" + ldm.replace(".", "_"): ("unet", diff)
                             for diff, ldm in names.ldm.items()}
    for name in names.modules["text_encoder"]:
        out["0_transformer_" + name.replace(".", "_")] = ("text_encoder", name)
    for i in range(names.text_layers["text_encoder_2"]):
        base, te = f"1_model_transformer_resblocks_{i}_", f"text_model.encoder.layers.{i}."
        out[base + "attn"] = ("text_encoder_2", te + _MHA)
        out[base + "attn_out_proj"] = ("text_encoder_2", te + "self_attn.out_proj")
        out[base + "mlp_c_fc"] = ("text_encoder_2", te + "mlp.fc1")
        out[base + "mlp_c_proj"] = ("text_encoder_2", te + "mlp.fc2")
    return out


def _compvis(key: str) -> str:
    """A1111's conversion of a diffusers-spelled module name (SD 1.x block arithmetic)."""
    rules = (
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[1]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[1]}"),
        (r"lora_unet_time_embedding_linear_(\d+)(.*)",
         lambda m: f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"),
        (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_"
                   f"{1 if m[2] == 'attentions' else 0}_{_res(m[2], m[4])}"),
        (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_middle_block_"
                   f"{1 if m[1] == 'attentions' else int(m[2]) * 2}_{_res(m[1], m[3])}"),
        (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)",
         lambda m: f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_"
                   f"{1 if m[2] == 'attentions' else 0}_{_res(m[2], m[4])}"),
        (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv",
         lambda m: f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"),
        (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
         lambda m: f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_"
                   f"{2 if int(m[1]) > 0 else 1}_conv"),
        (r"lora_te2_text_model_encoder_layers_(\d+)_(.+)",
         lambda m: f"1_model_transformer_resblocks_{m[1]}_" + m[2].replace(
             "mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")),
    )
    for pattern, build in rules:
        m = re.match(pattern, key)
        if m:
            return build(m)
    return key


def _res(kind: str, suffix: str) -> str:
    return _RESNET_A1111.get(suffix, suffix) if kind == "resnets" else suffix


def _a1111_lookup(module: str, layers: dict[str, Canon]) -> Canon | None:
    key = _compvis(module)
    hit = layers.get(key)
    if hit is None and (m := re.match(r"(.*)_([qkv]_proj)$", key)):
        hit = layers.get(m.group(1))
        if hit is not None and hit[1].endswith(_MHA):
            hit = (hit[0], hit[1].replace(_MHA, "self_attn." + m.group(2)))
    if hit is None and "lora_unet" in module:
        hit = layers.get(module.replace("lora_unet", "diffusion_model"))
    elif hit is None and "lora_te1_text_model" in module:
        hit = layers.get(module.replace("lora_te1_text_model", "0_transformer_text_model"))
    return None if hit is None or hit[1].endswith(_MHA) else hit


def a1111(tensors: dict[str, Any], names: SDXLNames) -> TargetResult:
    layers = a1111_layer_map(names)
    key_map = {}
    for key in tensors:
        module = key.partition(".")[0]
        if module not in key_map and (hit := _a1111_lookup(module, layers)) is not None:
            key_map[module] = hit
    res = _apply("A1111", tensors, names, key_map, pairs=PAIRS[:1])
    per_output = [k for k, v in tensors.items() if k.endswith(".dora_scale")
                  and k not in res.unmatched and len(v.shape) >= 2 and int(v.shape[0]) > 1]
    if per_output:
        res.notes.append(f"{len(per_output)} dora_scale tensors are per output row (peft and "
                         "ComfyUI); A1111 1.10 normalises DoRA per input column")
    return res


# ---- diffusers -------------------------------------------------------------------------------
PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector.weight",
                  ".lora_magnitude_vector", ".lora_B.bias")


def converted_like_diffusers(tensors: dict[str, Any], names: SDXLNames) -> dict[str, Any]:
    """``tensors`` as diffusers' SDXL loader hands them to peft (component-prefixed)."""
    from types import SimpleNamespace

    from diffusers.loaders.lora_pipeline import StableDiffusionXLLoraLoaderMixin
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from diffusers.utils import logging as dlog

    unet_cfg = SimpleNamespace(layers_per_block=_layers_per_block(names))
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # its DoRA warning is reported as a note
    try:
        sd, _ = StableDiffusionXLLoraLoaderMixin.lora_state_dict(dict(tensors),
                                                                 unet_config=unet_cfg)
    finally:
        dlog.set_verbosity(level)
    out: dict[str, Any] = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(comp) + 1:]: v for k, v in sd.items() if k.startswith(comp + ".")}
        if not part:
            continue
        if comp == "unet":
            part = part if "lora_A" in next(iter(part)) else convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        out.update({f"{comp}.{k}": v for k, v in part.items()})
    return out


def _layers_per_block(names: SDXLNames) -> int:
    idx = {int(m.group(1)) for n in names.modules["unet"]
           if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", n))}
    return max(idx) + 1 if idx else 2


def diffusers(tensors: dict[str, Any], names: SDXLNames) -> TargetResult:
    """diffusers' loader on ``tensors``. Its SDXL loader drops every ``dora_scale`` tensor (a
    Kohya-layout DoRA file loads without its magnitudes): noted, not counted."""
    dora = [k for k in tensors if "dora_scale" in k]
    res = TargetResult("diffusers", len(tensors) - len(dora))
    if dora:
        res.notes.append(f"diffusers drops the {count(len(dora))} dora_scale tensors of this "
                         "layout")
    try:
        converted = converted_like_diffusers(tensors, names)
    except Exception as exc:  # noqa: BLE001 - diffusers refuses the whole file
        res.unmatched = [k for k in tensors if k not in dora]
        res.error = first_line(exc, 200)
        return res
    bad = []
    for key in converted:
        comp, _, rest = key.partition(".")
        sfx = next((s for s in PEFT_SUFFIXES if rest.endswith(s)), None)
        module = rest[: -len(sfx)] if sfx else rest
        if comp != "unet" and not module.startswith("text_model.") and module != "text_projection":
            module = "text_model." + module
        if sfx is None or module not in names.modules.get(comp, {}):
            bad.append(key)
    weights = _weights(tensors)  # alphas are folded into the adapter config
    lost = max(0, weights - len(converted))  # dropped by the conversion itself
    res.matched = max(0, res.total - len(bad) - lost)
    res.unmatched = bad
    if lost:
        res.notes.append(f"diffusers' conversion drops {count(lost)} tensors")
    return res


def _weights(tensors: dict[str, Any]) -> int:
    """Tensors that are LoRA weights (not alphas or DoRA magnitudes)."""
    return sum(1 for k in tensors if not k.endswith(".alpha") and "dora_scale" not in k)


def count(n: int) -> str:
    """1,120"""
    return f"{n:,}"
