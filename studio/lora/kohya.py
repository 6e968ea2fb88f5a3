"""The Kohya/A1111/ComfyUI LoRA file format.

``diffusers.utils.convert_state_dict_to_kohya`` writes every ``.alpha`` as the rank, which gives
the wrong strength when the LoRA was trained with ``lora_alpha != rank`` (Kohya-format loaders scale
by alpha / rank), and it mangles mixed UNet (PEFT) + text-encoder (diffusers) keys.
:func:`to_kohya` writes the keys itself and sets each ``.alpha`` to the trained ``lora_alpha``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from studio.fsutil import atomic_write

log = logging.getLogger(__name__)

_KINDS = {".lora_A.weight": "lora_down.weight", ".lora_B.weight": "lora_up.weight",
          ".lora_linear_layer.down.weight": "lora_down.weight",
          ".lora_linear_layer.up.weight": "lora_up.weight",
          ".lora.down.weight": "lora_down.weight", ".lora.up.weight": "lora_up.weight",
          ".lora_magnitude_vector": "dora_scale", ".lora_magnitude_vector.weight": "dora_scale"}
_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def to_kohya(diffusers_state: dict[str, Any], lora_alpha: float) -> dict[str, Any]:
    """Convert our diffusers-format SDXL LoRA (``unet.`` / ``text_encoder.`` / ``text_encoder_2.``
    keys in PEFT naming) to Kohya keys (``lora_unet_*``, ``lora_te1_text_model_*``,
    ``lora_te2_text_model_*``) with ``.alpha`` = ``lora_alpha`` for every module."""
    import torch

    out: dict[str, Any] = {}
    for key, value in diffusers_state.items():
        component, _, rest = key.partition(".")
        if component not in _PREFIX:
            raise ValueError(f"unexpected LoRA key {key}")
        suffix = next((sfx for sfx in _KINDS if rest.endswith(sfx)), None)
        if suffix is None:
            raise ValueError(f"unexpected LoRA key {key}")
        module, kind = rest[: -len(suffix)], _KINDS[suffix]
        if component != "unet" and not module.startswith("text_model."):
            module = "text_model." + module  # the CLIP layout A1111/ComfyUI expect
        name = f"{_PREFIX[component]}_{module.replace('.', '_')}"
        out[f"{name}.{kind}"] = value
        out[f"{name}.alpha"] = torch.tensor(float(lora_alpha))
    return out


def write_kohya(diffusers_file: Path, out_file: Path, lora_alpha: float) -> Path:
    """Write the Kohya/A1111/ComfyUI file next to the diffusers LoRA (atomic)."""
    from safetensors.torch import load_file, save_file

    kohya = to_kohya(load_file(str(diffusers_file)), lora_alpha)
    kohya = {k: v.contiguous() for k, v in kohya.items()}
    meta = {"ss_network_module": "networks.lora", "ss_network_alpha": str(lora_alpha),
            "ss_network_dim": str(next(v.shape[0] for k, v in kohya.items()
                                       if k.endswith("lora_down.weight"))),
            "ss_base_model_version": "sdxl_base_v1-0", "format": "pt"}
    return atomic_write(out_file, lambda p: save_file(kohya, str(p), metadata=meta))
