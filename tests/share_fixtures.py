"""Builders for the sharing tests: a run folder per the run-folder contract with a REAL tiny LoRA
(peft on the tiny SDXL UNet, saved by StableDiffusionXLPipeline.save_lora_weights), and a
prepared dataset per the dataset contract."""

from __future__ import annotations

import json
import time
from pathlib import Path

from studio.config import TrainConfig

TRIGGER = "TOK"
INSTANCE_PROMPT = "a photo of TOK person"
RANK, ALPHA = 4, 8  # alpha != rank: the Kohya export must keep the scale


def _lora_unet(seed: int):
    import torch
    from peft import LoraConfig

    from studio.tiny import build_sdxl_components

    unet = build_sdxl_components(0)["unet"]
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:  # gaussian init leaves B at zero: make the LoRA change the output
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return unet


def save_lora(folder: Path, seed: int) -> None:
    """A diffusers LoRA file in diffusers' older ``lora.down`` spelling, with adapter metadata."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet = _lora_unet(seed)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())


def _png(path: Path, seed: int, prompt: str) -> None:
    import numpy as np
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(seed)
    meta = PngImagePlugin.PngInfo()
    meta.add_text("prompt", prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, pnginfo=meta)


def build_run(run: Path, base: str | Path) -> Path:
    """A finished run with 2 checkpoints (steps 2 and 4, diffusers files only), samples, events,
    card, manifest; the final LoRA in every export format (studio.lora.formats)."""
    from studio.lora.formats import write_exports

    run.mkdir(parents=True, exist_ok=True)
    save_lora(run, seed=4)
    write_exports(run, ALPHA)
    for step in (2, 4):
        ck = run / "checkpoints" / f"checkpoint-{step:06d}"
        ck.mkdir(parents=True)
        save_lora(ck, seed=step)
        (ck / "training_state.pt").write_bytes(b"state")
        (ck / "COMPLETE").write_text("ok")
    config = {"model": {"base": str(base)}, "data": {"dataset": "/data/me", "resolution": 64},
              "lora": {"rank": RANK, "alpha": ALPHA}, "train": {"max_train_steps": 4, "seed": 0},
              "validation": {"prompts": [f"{INSTANCE_PROMPT}, smiling", f"{INSTANCE_PROMPT}, hat"]}}
    (run / "config.yaml").write_text(TrainConfig.model_validate(config).to_yaml(), encoding="utf-8")
    (run / "manifest.json").write_text(json.dumps({
        "trigger": TRIGGER, "class_word": "person", "instance_prompt": INSTANCE_PROMPT,
        "base_model": str(base), "dataset_hash": "abc123", "seed": 0, "wall_time_s": 1.5,
        "packages": {"diffusers": "0.42.1"}}), encoding="utf-8")
    now = time.time()
    events = [{"type": "start", "step": 0, "total_steps": 4, "resumed_from": None, "pid": 1}]
    for step in (2, 4):
        events.append({"type": "step", "step": step, "total_steps": 4, "loss": 0.1, "lr": 1e-4,
                       "epoch": 0, "steps_per_s": 1.0, "eta_s": 0.0, "mem_gb": 0.1})
        for i, prompt in enumerate(config["validation"]["prompts"]):
            rel = f"samples/step-{step:06d}/{i}.png"
            _png(run / rel, step * 10 + i, prompt)
            events.append({"type": "sample", "step": step, "prompt": prompt, "seed": i,
                           "path": rel})
        events.append({"type": "checkpoint", "step": step,
                       "path": f"checkpoints/checkpoint-{step:06d}"})
    events.append({"type": "end", "status": "finished", "step": 4, "message": "done"})
    (run / "events.jsonl").write_text("".join(json.dumps({**e, "time": now}) + "\n"
                                              for e in events), encoding="utf-8")
    (run / "README.md").write_text(
        "---\nbase_model: local\ntags:\n- lora\n---\n\n# me-lora\n\nTrained by the studio trainer "
        "with trigger `TOK`.\n\n```python\npipe.load_lora_weights(\"THIS_REPO_OR_FOLDER\")\n```\n",
        encoding="utf-8")
    return run


def build_dataset(root: Path, n: int = 3) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    (root / "originals").mkdir()
    lines = []
    for i in range(n):
        name = f"{i + 1:04d}.png"
        _png(images / name, i, "x")
        _png(root / "originals" / name, 100 + i, "x")
        lines.append(json.dumps({"file_name": name, "text": f"{INSTANCE_PROMPT}, smiling {i}"}))
    (images / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "trigger": TRIGGER, "class_word": "person", "template": "x",
        "hash": "h", "created": 0, "count": n, "framing": "face"}), encoding="utf-8")
    return root


def kohya_metadata(data: bytes | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (its bytes or its path)."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]).get("__metadata__") or {}


def assert_sdxl_kohya(data: bytes | Path, alpha: float | None = None) -> dict[str, str]:
    """A Kohya LoRA that A1111/Forge list for SDXL: ss_base_model_version starts with sdxl_."""
    meta = kohya_metadata(data)
    assert meta.get("ss_base_model_version", "").startswith("sdxl_"), meta
    assert meta.get("modelspec.architecture") == "stable-diffusion-xl-v1-base/lora", meta
    assert meta.get("ss_network_module") == "networks.lora" and meta.get("format") == "pt", meta
    assert int(meta["ss_network_dim"]) > 0
    if alpha is not None:
        assert float(meta["ss_network_alpha"]) == alpha, meta
    return meta
