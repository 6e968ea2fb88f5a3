"""The Kohya/A1111/Forge/ComfyUI LoRA file format: the one converter from our diffusers file.

It serves the final LoRA, checkpoints, checkpoint export, push and bundle, so every Kohya file
the studio writes has the same keys, scale and metadata:

* keys: ``lora_unet_`` + the UNet module's name in the original LDM layout
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``, the names kohya sd-scripts
  writes for SDXL and its merge/resize tools look up; A1111 and ComfyUI map them directly, see
  :mod:`studio.lora.loaders`), ``lora_te1_text_model_*``, ``lora_te2_text_model_*``, from peft
  (``lora_A``/``lora_B``) or older diffusers (``lora.down``/``lora.up``,
  ``lora_linear_layer.down``/``up``) spellings; DoRA magnitudes become ``dora_scale`` shaped
  like the weight, ``(out, 1)`` or ``(out, 1, 1, 1)`` (ComfyUI reads the normalised axis from the
  shape);
* scale: each module's ``.alpha`` is the given ``lora_alpha``, else the component's
  ``lora_alpha`` from the file's ``lora_adapter_metadata``, else the rank (what diffusers itself
  assumes for such a file). ``diffusers.utils.convert_state_dict_to_kohya`` always writes the
  rank, which gives the wrong strength when alpha != rank;
* metadata: ``ss_base_model_version`` starts with ``sdxl_`` (A1111 and Forge hide a LoRA from
  SDXL users otherwise), plus the network module, dim, alpha and the modelspec architecture.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.fsutil import atomic_write
from studio.lora.sdxl_names import ldm_name

log = logging.getLogger(__name__)

KOHYA_METADATA = {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0",
                  "modelspec.architecture": "stable-diffusion-xl-v1-base/lora", "format": "pt"}
DOWN, UP, DORA = "lora_down.weight", "lora_up.weight", "dora_scale"
_KINDS = {".lora_A.weight": DOWN, ".lora_B.weight": UP,
          ".lora_linear_layer.down.weight": DOWN, ".lora_linear_layer.up.weight": UP,
          ".lora.down.weight": DOWN, ".lora.up.weight": UP,
          ".lora_magnitude_vector": DORA, ".lora_magnitude_vector.weight": DORA}
_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


class KohyaError(StudioError, ValueError):
    """A LoRA file that cannot be converted to the Kohya format (one sentence)."""


def adapter_alphas(metadata: Mapping[str, str] | None) -> dict[str, float]:
    """``{"unet": alpha, "text_encoder": alpha, ...}`` from diffusers' ``lora_adapter_metadata``."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    out: dict[str, float] = {}
    for key, value in meta.items() if isinstance(meta, dict) else ():
        component, _, name = key.rpartition(".")
        if name == "lora_alpha" and isinstance(value, (int, float)):
            out[component] = float(value)
    return out


def _kohya_key(key: str) -> tuple[str, str, str]:
    """(component, Kohya module name, kind) of a diffusers LoRA key."""
    component, _, rest = key.partition(".")
    suffix = next((sfx for sfx in _KINDS if rest.endswith(sfx)), None)
    if component not in _PREFIX or suffix is None:
        raise KohyaError(f"The LoRA key {key!r} is not a diffusers SDXL LoRA key; the file cannot "
                         "be converted to the Kohya format.")
    module = rest[: -len(suffix)]
    if component == "unet":
        module = ldm_name(module) or module
    elif not module.startswith("text_model.") and module != "text_projection":
        module = "text_model." + module  # the CLIP layout A1111/ComfyUI expect
    return component, f"{_PREFIX[component]}_{module.replace('.', '_')}", _KINDS[suffix]


def to_kohya(diffusers_state: Mapping[str, Any],
             lora_alpha: float | Mapping[str, float] | None = None) -> dict[str, Any]:
    """Kohya keys for a diffusers-format SDXL LoRA state dict. ``lora_alpha``: one alpha for
    every module, or one per component (``unet``, ``text_encoder``, ``text_encoder_2``); a module
    without one gets its rank."""
    import torch

    out: dict[str, Any] = {}
    ups = {}
    for key, value in diffusers_state.items():
        component, name, kind = _kohya_key(key)
        out[f"{name}.{kind}"] = value.contiguous()
        if kind == UP:
            ups[name] = value.dim()
        if kind == DOWN:
            alpha = lora_alpha.get(component) if isinstance(lora_alpha, Mapping) else lora_alpha
            out[f"{name}.alpha"] = torch.tensor(float(alpha if alpha is not None
                                                      else value.shape[0]))
    for name, dims in ups.items():
        if f"{name}.{DORA}" in out:
            m = out[f"{name}.{DORA}"]
            out[f"{name}.{DORA}"] = m.reshape(-1, *[1] * (dims - 1)).contiguous()
    return out


def read_safetensors(src: Path, error: type[Exception] | None = None
                     ) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a LoRA file; ``error`` (default :class:`KohyaError`) with one
    sentence when it cannot be read as safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(src), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - safetensors raises several unrelated types
        raise (error or KohyaError)(f"The LoRA file {src.name} cannot be read as safetensors "
                                    f"({type(exc).__name__}).") from None


def write_kohya(src: str | Path, dst: str | Path, lora_alpha: float | None = None) -> Path:
    """Write the Kohya version of the diffusers LoRA ``src`` to ``dst`` (atomic) and return it.
    Raises :class:`KohyaError` (one sentence) when ``src`` is not a diffusers SDXL LoRA."""
    from safetensors.torch import save_file

    src = Path(src)
    tensors, metadata = read_safetensors(src)
    alphas = adapter_alphas(metadata)
    kohya = to_kohya(tensors, float(lora_alpha) if lora_alpha is not None else alphas)
    downs = [k for k in kohya if k.endswith(DOWN)]
    if not downs:
        raise KohyaError(f"The LoRA file {src.name} holds no LoRA weights.")
    down = next((k for k in downs if k.startswith(_PREFIX["unet"])), downs[0])
    meta = {**KOHYA_METADATA, "ss_network_dim": str(int(kohya[down].shape[0])),
            "ss_network_alpha": str(float(kohya[down.replace(DOWN, "alpha")]))}
    return atomic_write(dst, lambda p: save_file(kohya, str(p), metadata=meta))
