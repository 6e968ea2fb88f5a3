"""The run folder: the one place that knows its layout.

::

    RUN/
      config.yaml                       the typed TrainConfig of the run (studio.config)
      events.jsonl                      start/step/sample/checkpoint/log/error/end (runs.events)
      train.log                         stdout/stderr of a background job
      checkpoints/checkpoint-<step:06d>/  pytorch_lora_weights.safetensors, lora_kohya.safetensors,
                                        training_state.pt, COMPLETE (runs.checkpoints)
      samples/step-<step:06d>/<k>.png   validation images
      compare/                          cached checkpoint-comparison cells
      class_images/                     generated prior-preservation images
      pytorch_lora_weights.safetensors  the run's LoRA (diffusers) and its other export formats
      lora_kohya.safetensors            (studio.lora.formats)
      embeddings.safetensors            pivotal tuning: the trigger's new token embeddings, clip_l
                                        and clip_g (studio.lora.embeddings; also in checkpoints)
      manifest.json                     what the run's LoRA is and how it was made (runs.manifest)
      README.md                         the model card (runs.card)
      selected_checkpoint.json          set when a checkpoint was exported as the run's LoRA
      identity.json                     the subject's face embedding (studio.identity.subject)
      bleed/step-<step:06d>/<k>.png     images of the prompts without the trigger (identity
      bleed/base/<k>.png                bleed), with the LoRA and once without it
      likeness.json                     scores per checkpoint and the proposed best one

Every other module asks a :class:`RunFolder` for paths, checkpoints, the config, the trigger
and the events instead of spelling out a file name or parsing a file itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.lora.formats import DIFFUSERS_FILE, KOHYA_FILE
from studio.runs import checkpoints as ckpt
from studio.runs.events import EVENTS_FILE, EventWriter, read_events_from

log = logging.getLogger(__name__)

SAMPLE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_SAMPLE_DIR = re.compile(r"^step-(\d+)$")


class RunError(StudioError, ValueError):
    """A request about a run that the user must change (one sentence)."""


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint of a run."""

    step: int
    path: Path

    @property
    def lora_path(self) -> Path:
        return self.path / DIFFUSERS_FILE


@dataclass(frozen=True)
class Sample:
    """One validation image of a run."""

    step: int
    path: Path          # the image file
    rel: str            # run-relative, e.g. samples/step-000100/0.png
    prompt: str | None

    def card_entry(self) -> dict[str, Any]:
        """The sample as the model card lists it (runs.card)."""
        return {"prompt": self.prompt or "", "path": self.rel}


def _png_prompt(path: Path) -> str | None:
    """The prompt stored in an image's text chunks (the trainer writes "prompt")."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
    except Exception:  # noqa: BLE001 - an unreadable image just has no prompt
        return None
    if text.get("prompt"):
        return str(text["prompt"])
    for v in text.values():
        try:
            d = json.loads(v)
        except (TypeError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("prompt"), str):
            return d["prompt"]
    return None


def _image_order(p: Path) -> tuple[int, str]:
    return (int(p.stem) if p.stem.isdigit() else 1 << 30, p.name)


def companion_files(folder: str | os.PathLike) -> dict[str, Path]:
    """{file name: path} of the files that travel with a LoRA in ``folder`` (a run or a
    checkpoint folder), besides its export formats: the pivotal-tuning embeddings. Exports,
    pushes, bundles and manifests take these along with :func:`studio.lora.formats.export_files`."""
    folder = Path(folder)
    return {name: folder / name for name in (RunFolder.EMBEDDINGS,) if (folder / name).is_file()}


class _Member:
    """A path inside the run folder, named by one of RunFolder's file-name constants."""

    def __init__(self, constant: str):
        self.constant = constant

    def __get__(self, folder: RunFolder | None, owner: type) -> Any:
        if folder is None:
            return self
        return folder.path / getattr(owner, self.constant)


class RunFolder:
    """A run folder (it need not exist yet). Cheap to make; every read goes to the disk."""

    CONFIG = "config.yaml"
    EVENTS = EVENTS_FILE
    LOG = "train.log"
    MANIFEST = "manifest.json"
    CARD = "README.md"
    LORA = DIFFUSERS_FILE
    KOHYA = KOHYA_FILE
    EMBEDDINGS = "embeddings.safetensors"
    CHECKPOINTS = ckpt.CKPT_DIR
    SAMPLES = "samples"
    COMPARE = "compare"
    CLASS_IMAGES = "class_images"
    LOGS = "logs"
    SELECTED = "selected_checkpoint.json"
    IDENTITY = "identity.json"
    BLEED = "bleed"
    LIKENESS = "likeness.json"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    # ---- paths ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    config_path = _Member("CONFIG")
    events_path = _Member("EVENTS")
    log_path = _Member("LOG")
    manifest_path = _Member("MANIFEST")
    card_path = _Member("CARD")
    lora_path = _Member("LORA")
    kohya_path = _Member("KOHYA")
    embeddings_path = _Member("EMBEDDINGS")
    checkpoints_dir = _Member("CHECKPOINTS")
    samples_dir = _Member("SAMPLES")
    compare_dir = _Member("COMPARE")
    class_images_dir = _Member("CLASS_IMAGES")
    selected_path = _Member("SELECTED")
    identity_path = _Member("IDENTITY")
    likeness_path = _Member("LIKENESS")

    def sample_dir(self, step: int) -> Path:
        return self.samples_dir / f"step-{int(step):06d}"

    def bleed_dir(self, step: int | None) -> Path:
        """Identity-bleed images of ``step``; None: the baseline without the LoRA."""
        return self.path / self.BLEED / ("base" if step is None else f"step-{int(step):06d}")

    def exists(self) -> bool:
        return self.path.is_dir()

    def is_run(self) -> bool:
        """A folder that a training wrote (it has its config)."""
        return self.config_path.is_file()

    def has_lora(self) -> bool:
        return self.lora_path.is_file()

    def delete(self) -> None:
        """Remove the run folder and everything in it (the job service first checks that no
        job trains it). Renamed away first, so a half-deleted folder is never listed as a run."""
        import shutil

        if self.path.is_symlink() or not self.path.is_dir():
            raise RunError(f"{self.path} is not a run folder.")
        doomed = self.path.with_name(f".{self.path.name}.deleting-{os.getpid()}")
        self.path.rename(doomed)
        shutil.rmtree(doomed)

    # ---- config -----------------------------------------------------------------------------
    def config(self):
        """The run's :class:`~studio.config.TrainConfig` (migrated to the current version)."""
        from studio.config import ConfigError, load_config

        if not self.config_path.is_file():
            raise RunError(f"The run folder {self.path} has no {self.CONFIG}; pick a training run.")
        try:
            return load_config(config_path=self.config_path)
        except ConfigError as exc:
            raise RunError(f"The run {self.name} has an unreadable {self.CONFIG}: {exc}") from None

    def save_config(self, cfg) -> Path:
        """Write ``config.yaml`` (atomic). A file that already holds exactly this config is left
        alone, so a job the app queued is not written again when its trainer starts."""
        from studio.config import save_config

        try:
            if self.config_path.read_text(encoding="utf-8") == cfg.to_yaml():
                return self.config_path
        except OSError:
            pass
        self.path.mkdir(parents=True, exist_ok=True)
        return save_config(cfg, self.config_path)

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        """Complete checkpoints (COMPLETE marker and a LoRA file), oldest first."""
        return [Checkpoint(step, p) for step, p in ckpt.list_checkpoints(self.path)
                if (p / self.LORA).is_file()]

    def checkpoint(self, step: int) -> Checkpoint:
        """The complete checkpoint at ``step``; a :class:`RunError` naming the ones there are."""
        for c in self.checkpoints():
            if c.step == int(step):
                return c
        have = ", ".join(str(c.step) for c in self.checkpoints()) or "none"
        raise RunError(f"The run {self.name} has no complete checkpoint at step {int(step)} "
                       f"(complete checkpoints: {have}).")

    def checkpoint_dirs(self) -> list[dict[str, Any]]:
        """Every checkpoint folder, complete or not, with its state (for the live view)."""
        out = []
        for step, p in ckpt.checkpoint_dirs(self.path):
            lora = p / self.LORA
            out.append({"step": step, "path": str(p), "complete": (p / ckpt.MARKER).is_file(),
                        "lora": str(lora) if lora.is_file() else None})
        return out

    # ---- samples ------------------------------------------------------------------------------
    def _sample_steps(self, max_step: int | None = None) -> dict[int, list[Path]]:
        """{step: image files} of the sample folders (at or before ``max_step``), by step."""
        out: dict[int, list[Path]] = {}
        root = self.samples_dir
        for d in root.iterdir() if root.is_dir() else []:
            m = _SAMPLE_DIR.match(d.name)
            if not m or not d.is_dir() or (max_step is not None and int(m.group(1)) > max_step):
                continue
            imgs = sorted((p for p in d.iterdir() if p.suffix.lower() in SAMPLE_EXTS
                           and p.is_file() and not p.is_symlink()), key=_image_order)
            if imgs:
                out[int(m.group(1))] = imgs
        return dict(sorted(out.items()))

    def samples(self, max_step: int | None = None) -> list[Sample]:
        """The validation images of the latest sampled step at or before ``max_step`` (None: the
        latest of all), with their prompts (sample events, else the image's text chunk)."""
        steps = self._sample_steps(max_step)
        if not steps:
            return []
        step = max(steps)
        prompts = {str(e["path"]): e.get("prompt") for e in self.events()
                   if e.get("type") == "sample" and isinstance(e.get("path"), str)}
        out = []
        for p in steps[step]:
            rel = p.relative_to(self.path).as_posix()
            prompt = prompts.get(rel)
            out.append(Sample(step, p, rel, str(prompt) if prompt is not None else _png_prompt(p)))
        return out

    # ---- manifest, trigger, prompts -----------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """``manifest.json`` as a dict ({} when missing or unreadable)."""
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def trigger(self) -> tuple[str | None, str | None]:
        """(trigger, class word): from the manifest, else from the run's dataset."""
        m = self.manifest()
        if m.get("trigger"):
            return str(m["trigger"]), (str(m["class_word"]) if m.get("class_word") else None)
        try:
            dataset = self.config().data.dataset
        except RunError:
            return None, None
        if not dataset:
            return None, None
        from studio.dataset.store import dataset_identity

        return dataset_identity(dataset)

    def instance_prompt(self) -> str:
        """The prompt that names the subject: the one the run trained with (manifest), the
        configured one, else 'a photo of TRIGGER CLASS' from the dataset."""
        from studio.dataset.sources import default_instance_prompt

        m = self.manifest()
        if m.get("instance_prompt"):
            return str(m["instance_prompt"])
        try:
            configured = self.config().data.instance_prompt
        except RunError:
            configured = None
        if configured:
            return configured
        trigger, class_word = self.trigger()
        return default_instance_prompt(trigger, class_word)

    # ---- events -----------------------------------------------------------------------------
    def events(self, offset: int = 0) -> list[dict[str, Any]]:
        """The run's events from byte ``offset`` on (a torn last line is skipped)."""
        return read_events_from(self.events_path, offset)

    def event_writer(self, enabled: bool = True) -> EventWriter:
        return EventWriter(self.path, enabled=enabled)

    def end_event(self, offset: int = 0) -> dict[str, Any] | None:
        ends = [e for e in self.events(offset) if e.get("type") == "end"]
        return ends[-1] if ends else None

    def outcome(self, offset: int = 0) -> str | None:
        """finished | cancelled | failed from the last end event; None while none was written."""
        end = self.end_event(offset)
        return str(end.get("status") or "finished") if end is not None else None

    def events_size(self) -> int:
        try:
            return self.events_path.stat().st_size
        except OSError:
            return 0
