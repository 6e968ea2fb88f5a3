"""``RUN/manifest.json``: what a run's final LoRA is and how it was made."""

from __future__ import annotations

import logging
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from studio.fsutil import atomic_write_json
from studio.lora.formats import export_files
from studio.runs.checkpoints import sha256_file
from studio.runs.folder import RunFolder, companion_files

log = logging.getLogger(__name__)

PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors",
            "bitsandbytes", "prodigyopt")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hash_files(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{name: {"sha256", "bytes"}} of ``files`` ({name: path})."""
    return {name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for name, p in files.items()}


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's "files": sha256 and size of the LoRA export files in ``folder`` and the
    files that travel with them (the pivotal-tuning embeddings)."""
    return hash_files({**export_files(folder), **companion_files(folder)})


def lora_check(files: dict[str, Path], base: str | None) -> dict[str, dict[str, Any]]:
    """The manifest's "lora_check": the loader self-test of each LoRA file
    (:mod:`studio.lora.verify`) against the run's base."""
    from studio.lora.verify import check_files

    return check_files(files, base)


def lora_check_text(run_dir: str | Path) -> str:
    """The run's recorded loader check as Markdown lines ("" before the run has one)."""
    from studio.lora.verify import format_check

    return format_check(RunFolder(run_dir).manifest().get("lora_check"))


def lora_entry(cfg) -> dict[str, Any]:
    """The manifest's "lora" entry: how the LoRA layers were configured."""
    from studio.lora.embeddings import token_names

    lc = cfg.lora
    return {"rank": lc.rank, "alpha": lc.lora_alpha, "text_encoder": lc.train_text_encoder,
            "dora": lc.use_dora,
            "new_tokens": token_names(lc.num_new_tokens) if lc.train_text_embeddings else None}


def write_manifest(run_dir: Path, cfg, ds, base: str, vae: str | None, instance_prompt: str,
                   steps: int, wall_time: float, loss_history: list[float]) -> dict[str, Any]:
    """``RUN/manifest.json``: dataset hash, package versions, seed, wall time, trigger, base."""
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
        "lora": lora_entry(cfg),
        "packages": package_versions(),
        "files": file_entries(Path(run_dir)),
        "lora_check": lora_check({**export_files(Path(run_dir)), **companion_files(run_dir)},
                                 base),
    }
    atomic_write_json(RunFolder(run_dir).manifest_path, manifest)
    return manifest
