"""Convert a diffusers-format SDXL LoRA file to the Kohya format (A1111, ComfyUI).

Used for checkpoints, which hold only the diffusers file (the trainer writes the final run's
``lora_kohya.safetensors`` itself). The scale is kept: each module's ``.alpha`` is the
``lora_alpha`` stored in the file's adapter metadata, or the rank when the file has none, which
is also what diffusers assumes when it loads such a file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from studio.fsutil import atomic_write
from studio.share.runfiles import ShareError

log = logging.getLogger(__name__)

_PREFIXES = (("unet.", "lora_unet_", "unet"), ("text_encoder_2.", "lora_te2_", "text_encoder_2"),
             ("text_encoder.", "lora_te1_", "text_encoder"))
_SUFFIXES = ((".lora.down.weight", "lora_down"), (".lora.up.weight", "lora_up"),
             (".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up"))


def _alphas(metadata: dict[str, str] | None) -> dict[str, float]:
    """``{"unet": alpha, ...}`` from diffusers' ``lora_adapter_metadata`` (if present)."""
    out: dict[str, float] = {}
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return out
    try:
        meta = json.loads(raw)
    except ValueError:
        return out
    for key, value in meta.items():
        comp, _, name = key.rpartition(".")
        if name == "lora_alpha" and isinstance(value, (int, float)):
            out[comp] = float(value)
    return out


def diffusers_to_kohya(src: str | Path, dst: str | Path) -> Path:
    """Write the Kohya version of the diffusers LoRA ``src`` to ``dst`` (atomic)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = Path(src)
    try:
        with safe_open(str(src), framework="pt") as fh:
            metadata = fh.metadata()
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise ShareError(f"The LoRA file {src.name} cannot be read as safetensors "
                         f"({type(exc).__name__}).") from exc
    alphas = _alphas(metadata)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = next((p for p in _PREFIXES if key.startswith(p[0])), None)
        if match is None:
            raise ShareError(f"The LoRA file {src.name} has a key {key!r} that is not a diffusers "
                             "SDXL LoRA key; it cannot be converted to Kohya.")
        prefix, kohya_prefix, comp = match
        rest = key[len(prefix):]
        found = next((s for s in _SUFFIXES if rest.endswith(s[0])), None)
        if found is None:
            continue  # e.g. DoRA magnitude vectors: not representable, skipped
        suffix, kind = found
        module = rest[: -len(suffix)]
        name = kohya_prefix + module.replace(".", "_")
        out[f"{name}.{kind}.weight"] = tensor.contiguous()
        if kind == "lora_down":
            rank = tensor.shape[0]
            out[f"{name}.alpha"] = torch.tensor(alphas.get(comp, float(rank)))
    if not out:
        raise ShareError(f"The LoRA file {src.name} holds no LoRA weights.")
    return atomic_write(dst, lambda p: save_file(out, str(p), metadata={"format": "pt"}))
