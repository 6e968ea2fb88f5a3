"""Make one checkpoint the run's LoRA ("export checkpoint N" after comparing checkpoints).

Everything that describes the run's LoRA follows the chosen checkpoint, so a push or a bundle
afterwards ships one consistent story:

* ``RUN/pytorch_lora_weights.safetensors``: the checkpoint's file (copied atomically);
* every derived export format (:data:`studio.lora.formats.EXPORT_FORMATS`), written again with
  the run's alpha; a format that cannot be written is removed rather than left from another step;
* the files that travel with the LoRA (:func:`studio.runs.folder.companion_files`: the
  pivotal-tuning embeddings), copied from the checkpoint or removed when it has none;
* ``selected_checkpoint.json``: which checkpoint it is;
* ``manifest.json``: the new files' sha256 and size, ``steps`` = N, ``selected_checkpoint`` = N,
  the wall time and loss up to step N (from the run's events);
* ``README.md``: the model card says N steps and shows the samples of the latest sampled step
  at or before N.

:func:`checkpoint_manifest` also describes a checkpoint that is pushed or bundled as it is.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from studio.errors import first_line
from studio.fsutil import atomic_write, atomic_write_json
from studio.lora.formats import derived_formats, export_files, write_exports
from studio.runs.card import write_model_card
from studio.runs.folder import Checkpoint, RunFolder, companion_files
from studio.runs.manifest import hash_files, lora_check, lora_entry, package_versions

log = logging.getLogger(__name__)


def export_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Make checkpoint ``step`` the run's LoRA (see the module docs); returns the run's new
    diffusers LoRA file. Raises :class:`~studio.runs.folder.RunError` (one sentence) when the
    checkpoint is missing or incomplete or the run has no readable config."""
    run = RunFolder(run_dir)
    ck = run.checkpoint(step)
    cfg = run.config()
    dst = atomic_write(run.lora_path, lambda p: shutil.copyfile(ck.lora_path, p))
    _write_exports(run, cfg.lora.lora_alpha)
    _copy_companions(run, ck)
    atomic_write_json(run.selected_path, {"checkpoint": ck.step,
                                          "source": ck.lora_path.relative_to(run.path).as_posix()})
    manifest = checkpoint_manifest(run, cfg, ck, {**export_files(run.path),
                                                  **companion_files(run.path)})
    manifest["selected_checkpoint"] = ck.step
    atomic_write_json(run.manifest_path, manifest)
    for name, check in manifest.get("lora_check", {}).items():
        if not check.get("ok"):
            log.warning("run %s: %s fails the loader check: %s", run.name, name, check["summary"])
    write_model_card(run.path, cfg, manifest, [s.card_entry() for s in run.samples(ck.step)])
    log.info("run %s: checkpoint %s exported as the run's LoRA", run.name, ck.step)
    return dst


def _write_exports(run: RunFolder, lora_alpha: float) -> None:
    """Every derived format from the new diffusers file; on failure none is left behind, so no
    file can disagree with the selected checkpoint."""
    try:
        write_exports(run.path, lora_alpha)
    except Exception as exc:  # noqa: BLE001 - any failure: remove the stale files, say why
        for fmt in derived_formats():
            (run.path / fmt.file_name).unlink(missing_ok=True)
        log.warning("run %s: the derived LoRA formats were not written (%s) and were removed so "
                    "they cannot disagree with the selected checkpoint", run.name, first_line(exc))


def _copy_companions(run: RunFolder, ck: Checkpoint) -> None:
    """The checkpoint's companion files replace the run's; one the checkpoint lacks is removed."""
    have = companion_files(ck.path)
    for name, path in companion_files(run.path).items():
        if name not in have:
            path.unlink(missing_ok=True)
    for name, src in have.items():
        atomic_write(run.path / name, lambda p, s=src: shutil.copyfile(s, p))


def _progress(run: RunFolder, step: int) -> tuple[float | None, list[float]]:
    """(wall time, loss per step) of the run up to ``step``, from its events (the last value of
    a step that was run twice; each attempt's time from its start to its last step <= ``step``).
    The events, not the checkpoint's pickled training state, so describing a run never
    unpickles a file."""
    losses: dict[int, float] = {}
    wall, start, last = 0.0, None, None
    for e in run.events() + [{"type": "start"}]:  # the sentinel closes the last attempt
        if e.get("type") == "start":
            if start is not None and last is not None:
                wall += max(0.0, float(last) - float(start))
            start, last = e.get("time"), None
        elif e.get("type") == "step" and isinstance(e.get("step"), int) and e["step"] <= step \
                and isinstance(e.get("loss"), (int, float)):
            losses[e["step"]] = float(e["loss"])
            last = e.get("time")
    return (wall if losses else None), [losses[s] for s in sorted(losses)]


def checkpoint_manifest(run: RunFolder, cfg, ck: Checkpoint,
                        files: dict[str, Path]) -> dict[str, Any]:
    """The run's manifest rewritten to describe checkpoint ``ck`` shipped as ``files`` ({name:
    path}): their sha256 and size, ``steps``, wall time and loss of that step. A run that never
    finished has no manifest: one is made from its typed ``cfg`` (None: {} is returned)."""
    manifest = run.manifest() or (_fresh_manifest(run, cfg) if cfg is not None else {})
    if not manifest:
        return {}
    wall, losses = _progress(run, ck.step)
    tail = losses[-10:]
    manifest.update({
        "steps": ck.step, "files": hash_files(files),
        "lora_check": lora_check(files, manifest.get("base_model")),
        "wall_time_s": round(wall, 1) if wall is not None else None,
        "final_loss_mean_last10": (sum(tail) / len(tail)) if tail else None,
    })
    return manifest


def _fresh_manifest(run: RunFolder, cfg) -> dict[str, Any]:
    from studio.models import model_source, vae_source

    base = model_source("base", cfg.model.base)
    trigger, class_word = run.trigger()
    source = cfg.data.dataset
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base_model": base,
        "vae": vae_source(base, cfg.model.vae) or "base",
        "dataset": {"name": Path(source).name if source else None, "source": source},
        "trigger": trigger,
        "class_word": class_word,
        "instance_prompt": run.instance_prompt(),
        "seed": cfg.train.seed,
        "lora": lora_entry(cfg),
        "packages": package_versions(),
    }
