"""Which files of a run folder are shared (pushed to the Hub or put in a bundle).

Shared by :mod:`studio.share.hub` and :mod:`studio.share.bundle` so both publish the same set:
the run's LoRA in every export format (:data:`studio.lora.formats.EXPORT_FORMATS`) with the files
that travel with it (:func:`studio.runs.folder.companion_files`: pivotal-tuning embeddings),
``config.yaml``, ``manifest.json`` and a few samples. ``--checkpoint N`` picks that checkpoint's
LoRA instead; a format the checkpoint folder lacks is written from its diffusers file with the
run's alpha. The run folder is read only through :class:`~studio.runs.folder.RunFolder`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.lora.formats import DIFFUSERS_FILE, EXPORT_FORMATS, derived_formats, export_files
from studio.lora.kohya import KohyaError
from studio.runs.folder import RunError, RunFolder, Sample, companion_files

log = logging.getLogger(__name__)

MAX_SAMPLES = 4


class ShareError(StudioError, RuntimeError):
    """Sharing failed for a reason the user must fix; ``str(err)`` is one sentence."""


@dataclass
class RunFiles:
    """The resolved files of a run to share; ``files`` maps repo path -> local path."""

    run: RunFolder
    checkpoint: int | None
    files: dict[str, Path] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    card_text: str | None = None  # the run's README.md (the trainer's model card), if any
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def run_dir(self) -> Path:
        return self.run.path

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _config(run: RunFolder):
    """The run's typed config, or None when it has none or it cannot be read."""
    try:
        return run.config()
    except RunError as exc:
        log.warning("sharing run %s without its config: %s", run.name, exc)
        return None


def _final_files(rf: RunFiles) -> None:
    run = rf.run
    if not run.has_lora():
        steps = [c.step for c in run.checkpoints()]
        hint = (f"; push a checkpoint instead (--checkpoint {steps[-1]})" if steps
                else "; finish training first")
        raise ShareError(f"The run {run.name} has no final LoRA ({DIFFUSERS_FILE}){hint}.")
    rf.files.update(export_files(run.path))
    rf.files.update(companion_files(run.path))
    for fmt in EXPORT_FORMATS:
        if fmt.file_name not in rf.files:
            log.warning("run %s has no %s; sharing without it", run.name, fmt.file_name)
    steps = run.manifest().get("steps")  # the samples of the step the LoRA is from
    rf.samples = run.samples(steps if isinstance(steps, int) else None)[:MAX_SAMPLES]


def _tmp_dir(rf: RunFiles) -> Path:
    if rf._tmp is None:
        rf._tmp = tempfile.TemporaryDirectory(prefix="studio-share-")
    return Path(rf._tmp.name)


def _checkpoint_files(rf: RunFiles, step: int) -> None:
    """The checkpoint's formats (those it lacks are written from its diffusers file with the
    run's alpha), with a manifest and a model card that describe that checkpoint."""
    from studio.fsutil import atomic_write_json
    from studio.runs.card import render_model_card
    from studio.runs.export import checkpoint_manifest

    try:
        ck = rf.run.checkpoint(step)
    except RunError as exc:
        raise ShareError(str(exc)) from None
    cfg = _config(rf.run)
    loras = export_files(ck.path)
    for fmt in derived_formats():
        if fmt.file_name not in loras:
            try:
                loras[fmt.file_name] = fmt.write(ck.lora_path, _tmp_dir(rf) / fmt.file_name,
                                                 cfg.lora.lora_alpha if cfg else None)
            except KohyaError as exc:
                raise ShareError(str(exc)) from None
    loras.update(companion_files(ck.path))
    rf.files.update(loras)
    rf.samples = rf.run.samples(ck.step)[:MAX_SAMPLES]
    manifest = checkpoint_manifest(rf.run, cfg, ck, loras)
    rf.files.pop(rf.run.MANIFEST, None)  # the run's manifest describes other files
    rf.card_text = None
    if manifest:
        rf.files[rf.run.MANIFEST] = atomic_write_json(_tmp_dir(rf) / rf.run.MANIFEST, manifest)
    if manifest and cfg is not None:
        rf.card_text = render_model_card(cfg, manifest, [s.card_entry() for s in rf.samples])


def collect_run_files(run_dir: str | Path, checkpoint: int | None = None) -> RunFiles:
    """Resolve what to share from ``run_dir``; raises :class:`ShareError` (one sentence) when the
    run has nothing to share. Call :meth:`RunFiles.cleanup` when done."""
    run = RunFolder(run_dir)
    if not run.exists():
        raise ShareError(f"The run folder {run.path} does not exist; pick a training run.")
    rf = RunFiles(run=run, checkpoint=checkpoint)
    for path in (run.config_path, run.manifest_path):
        if path.is_file():
            rf.files[path.name] = path
    if run.card_path.is_file():
        rf.card_text = run.card_path.read_text(encoding="utf-8", errors="replace")
    try:
        if checkpoint is None:
            _final_files(rf)
        else:
            _checkpoint_files(rf, int(checkpoint))
    except BaseException:
        rf.cleanup()
        raise
    for s in rf.samples:
        rf.files[s.rel] = s.path
    try:
        _check_loras(rf)
    except BaseException:
        rf.cleanup()
        raise
    return rf


def _check_loras(rf: RunFiles) -> None:
    """Refuse (one sentence) a LoRA file that a loader would not apply fully."""
    from studio.lora.verify import LoraCheckError, require_loadable

    base = trigger_info(rf)["base_model"]
    names = [fmt.file_name for fmt in EXPORT_FORMATS] + [rf.run.EMBEDDINGS]
    for name in names:
        if name in rf.files:
            try:
                require_loadable(rf.files[name], base)
            except LoraCheckError as exc:
                raise ShareError(str(exc)) from None


def trigger_info(rf: RunFiles) -> dict[str, Any]:
    """Trigger word, class word, instance prompt and base model of the run (its manifest, else
    its typed config and dataset)."""
    from studio.models import ROLES

    run = rf.run
    trigger, class_word = run.trigger()
    base = run.manifest().get("base_model")
    if not base:
        cfg = _config(run)
        base = cfg.model.base if cfg is not None else None
    return {"trigger": trigger, "class_word": class_word, "instance_prompt": run.instance_prompt(),
            "base_model": str(base) if base else ROLES["base"].default}
