"""Final exports: the Kohya/A1111/ComfyUI LoRA file (with the right alpha) and manifest.json.

``diffusers.utils.convert_state_dict_to_kohya`` writes every ``.alpha`` as the rank, which gives
the wrong strength when the LoRA was trained with ``lora_alpha != rank`` (Kohya-format loaders scale
by alpha / rank), and it mangles mixed UNet (PEFT) + text-encoder (diffusers) keys.
:func:`to_kohya` writes the keys itself and sets each ``.alpha`` to the trained ``lora_alpha``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from studio.fsutil import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

KOHYA_FILE = "lora_kohya.safetensors"
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors",
            "bitsandbytes", "prodigyopt")


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


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(run_dir: Path, cfg, ds, base: str, vae: str | None, instance_prompt: str,
                   steps: int, wall_time: float, loss_history: list[float]) -> dict[str, Any]:
    """``RUN/manifest.json``: dataset hash, package versions, seed, wall time, trigger, base."""
    files = {}
    for name in ("pytorch_lora_weights.safetensors", KOHYA_FILE):
        p = run_dir / name
        if p.is_file():
            files[name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    tail = loss_history[-10:]
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": base,
        "vae": vae or "base",
        "dataset": {"name": ds.name, "hash": ds.hash, "images": len(ds.examples),
                    "source": cfg.data.dataset},
        "trigger": ds.trigger,
        "class_word": ds.class_word,
        "instance_prompt": instance_prompt,
        "seed": cfg.train.seed,
        "steps": steps,
        "wall_time_s": round(wall_time, 1),
        "final_loss_mean_last10": (sum(tail) / len(tail)) if tail else None,
        "lora": {"rank": cfg.lora.rank, "alpha": cfg.lora.lora_alpha,
                 "text_encoder": cfg.lora.train_text_encoder, "dora": cfg.lora.use_dora},
        "packages": package_versions(),
        "files": files,
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
    return manifest


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
