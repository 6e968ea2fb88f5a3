"""LoRA files from other trainers, made loadable in full by diffusers, and the proof they were.

diffusers' SDXL loader takes Kohya-layout files (``lora_unet_*``, ``lora_te1_*``...) but drops
every ``dora_scale`` tensor with only a warning, and skips keys it cannot place the same way.
:func:`loadable_copy` turns a Kohya/LyCORIS-layout file (kohya's LDM names or the diffusers
spelling, text-encoder keys, ``dora_scale``, LoCon convolutions) into diffusers' peft layout:

* each module is found with our key rules (:func:`studio.lora.loaders.comfyui_key_map`) among
  the modules of the base (:mod:`studio.lora.sdxl_names`) and its shapes are checked;
* its scale alpha / rank is folded into ``lora_B``, and the adapter metadata gives every module
  alpha = rank, so peft applies exactly the scale the file asks for, whatever its ranks;
* ``dora_scale`` shaped ``(out, 1...)`` (per output row, as peft computes DoRA) becomes peft's
  magnitude; a per-input-column ``dora_scale`` cannot be expressed in peft and its module is
  skipped, as are Tucker (``lora_mid``) and unknown keys.

The copy is written once into the model cache. :func:`missing_after_load` then lists the modules
of a file that did not receive the adapter, so a partial load is always said, never silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.fsutil import atomic_write
from studio.lora.loaders import PAIRS, comfyui_key_map, shape_ok
from studio.lora.sdxl_names import SDXLNames
from studio.lora.verify import layout_of, read_lora

log = logging.getLogger(__name__)

VERSION = 1  # of the conversion: part of the cached copy's name
_DORA_KEY = {"unet": "lora_magnitude_vector"}  # text encoders: ".weight" (see train/sdxl.py)


@dataclass
class Loadable:
    """The file to hand to diffusers and what could not be carried over."""

    path: Path
    skipped: list[str] = field(default_factory=list)


def _module_of(key: str) -> tuple[str, str, str] | None:
    for up, down in PAIRS:
        for sfx, kind in ((up, "up"), (down, "down")):
            if key.endswith(sfx):
                return key[: -len(sfx)], kind, sfx
    for sfx in (".alpha", ".dora_scale", ".lora_mid.weight"):
        if key.endswith(sfx):
            return key[: -len(sfx)], sfx[1:], sfx
    return None


def to_peft(tensors: dict[str, Any], names: SDXLNames
            ) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[str]]:
    """(peft state dict, {component: LoraConfig kwargs}, skipped keys) of a Kohya-layout dict."""
    key_map = comfyui_key_map(names)
    groups: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for key, value in tensors.items():
        parsed = _module_of(key)
        if parsed is None or parsed[0] not in key_map:
            skipped.append(key)
            continue
        groups.setdefault(parsed[0], {})[parsed[1]] = (key, value)
    out: dict[str, Any] = {}
    ranks: dict[str, dict[str, int]] = {}
    dora: set[str] = set()
    for module, parts in groups.items():
        comp, name = key_map[module]
        converted = _convert(parts, names.modules[comp].get(name), comp)
        if converted is None:
            skipped += [k for k, _ in parts.values()]
            continue
        # diffusers drops "text_model." from the keys where transformers has no such wrapper;
        # the config's names match as suffixes, so they go without it
        out.update({f"{comp}.{name}.{k}": v for k, v in converted.items()})
        target = name.removeprefix("text_model.")
        ranks.setdefault(comp, {})[target] = int(converted["lora_A.weight"].shape[0])
        if len(converted) > 2:
            dora.add(comp)
    return out, {comp: _config(r, comp in dora) for comp, r in ranks.items()}, skipped


def _convert(parts: dict[str, Any], layer, comp: str) -> dict[str, Any] | None:
    """lora_A / lora_B (scale folded in) / magnitude of one module, None when not applicable."""
    if layer is None or "up" not in parts or "down" not in parts or "lora_mid.weight" in parts:
        return None
    down, up = parts["down"][1].float(), parts["up"][1].float()
    rank = int(down.shape[0])
    if not shape_ok(layer, down, up):
        return None
    alpha = float(parts["alpha"][1]) if "alpha" in parts else float(rank)
    out = {"lora_A.weight": down.contiguous(), "lora_B.weight": (up * (alpha / rank)).contiguous()}
    if "dora_scale" in parts:
        mag = parts["dora_scale"][1].float()
        if mag.numel() != layer.fan_out or (mag.dim() > 1 and int(mag.shape[0]) != layer.fan_out):
            return None  # per input column: not what peft computes
        shape = (layer.fan_out,) if layer.kind == "linear" else (1, layer.fan_out, 1, 1)
        out[_DORA_KEY.get(comp, "lora_magnitude_vector.weight")] = mag.reshape(shape).contiguous()
    return out


def _config(ranks: dict[str, int], use_dora: bool) -> dict[str, Any]:
    """peft LoraConfig kwargs giving every module alpha = its rank (scales are folded in)."""
    from collections import Counter

    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: v for m, v in ranks.items() if v != r}
    return {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern),
            "target_modules": sorted(ranks), "use_dora": use_dora, "lora_dropout": 0.0,
            "init_lora_weights": True}


def default_cache_dir() -> Path:
    from studio.workspace import default_home

    return default_home() / "models" / "lora-converted"


def loadable_copy(file: Path, names: SDXLNames, cache_dir: Path | None = None) -> Loadable:
    """``file`` itself when diffusers loads its layout whole, else a converted copy (made once per
    file version) and the keys that could not be carried over."""
    tensors, metadata = read_lora(file)
    if layout_of(tensors) != "kohya":
        return Loadable(file)
    st = file.stat()
    tag = hashlib.sha256(f"{VERSION}|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{names.label}"
                         .encode()).hexdigest()[:16]
    out = (cache_dir or default_cache_dir()) / tag / file.name
    peft, configs, skipped = to_peft(tensors, names)
    if not out.is_file() and peft:
        from safetensors.torch import save_file

        meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
            {f"{comp}.{k}": v for comp, cfg in configs.items() for k, v in cfg.items()})}
        atomic_write(out, lambda p: save_file(peft, str(p), metadata=meta))
    return Loadable(out if peft else file, skipped)


def missing_after_load(pipe, file: Path, adapter: str, names: SDXLNames) -> list[str]:
    """Modules of ``file`` (as diffusers converts it) that did not receive ``adapter``."""
    from studio.lora.loaders import PEFT_SUFFIXES, converted_like_diffusers

    tensors, _ = read_lora(file)
    modules = set()
    for key in converted_like_diffusers(tensors, names):
        comp, _, rest = key.partition(".")
        sfx = next((s for s in PEFT_SUFFIXES if rest.endswith(s)), "")
        modules.add((comp, rest[: -len(sfx)] if sfx else rest))
    missing = []
    for comp, path in sorted(modules):
        model = getattr(pipe, comp, None)
        if model is not None and not hasattr(model, "text_model"):
            path = path.removeprefix("text_model.")
        try:
            layer = model.get_submodule(path)
        except (AttributeError, TypeError):
            layer = None
        if layer is None or adapter not in getattr(layer, "lora_A", {}):
            missing.append(f"{comp}.{path}")
    return missing
