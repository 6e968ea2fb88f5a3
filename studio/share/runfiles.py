"""Which files of a run folder are shared (pushed to the Hub or put in a bundle).

Shared by :mod:`studio.share.hub` and :mod:`studio.share.bundle` so both publish the same set:
the diffusers LoRA, the Kohya LoRA, ``config.yaml``, ``manifest.json`` and a few samples.
``--checkpoint N`` picks ``checkpoints/checkpoint-<N:06d>/`` instead of the final LoRA; its Kohya
file is converted from the checkpoint's diffusers file when the checkpoint has none.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.fsutil import read_jsonl

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "lora_kohya.safetensors"
MAX_SAMPLES = 4
_STEP_DIR = re.compile(r"^step-(\d+)$")


class ShareError(StudioError, RuntimeError):
    """Sharing failed for a reason the user must fix; ``str(err)`` is one sentence."""


@dataclass
class SampleImage:
    path: Path          # local file
    repo_path: str      # path inside the repo / zip (run-relative, e.g. samples/step-000100/0.png)
    prompt: str | None
    step: int | None


@dataclass
class RunFiles:
    """The resolved files of a run to share; ``files`` maps repo path -> local path."""

    run_dir: Path
    checkpoint: int | None
    files: dict[str, Path] = field(default_factory=dict)
    samples: list[SampleImage] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    card_text: str | None = None  # the run's README.md (trainer's model card), if any
    _tmp: tempfile.TemporaryDirectory | None = None

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"checkpoint-{int(step):06d}"


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run (those with a COMPLETE marker), ascending."""
    root = Path(run_dir) / "checkpoints"
    steps = []
    for p in root.glob("checkpoint-*") if root.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "COMPLETE").exists() and (p / LORA_FILE).is_file():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ShareError(f"The run's config.yaml cannot be read ({type(exc).__name__}); "
                         "check the run folder.") from exc
    return data if isinstance(data, dict) else {}


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def find_value(data: Any, *keys: str) -> Any:
    """The first value found for any of ``keys`` at any depth of nested dicts (breadth first)."""
    queue = [data]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for k in keys:
                if cur.get(k) not in (None, ""):
                    return cur[k]
            queue.extend(v for v in cur.values() if isinstance(v, dict))
    return None


def _pick_samples(run_dir: Path, max_step: int | None) -> list[SampleImage]:
    """The validation images of the latest sampled step (at or before ``max_step``)."""
    prompts: dict[str, tuple[str | None, int | None]] = {}
    for ev in read_jsonl(run_dir / "events.jsonl"):
        if ev.get("type") == "sample" and isinstance(ev.get("path"), str):
            prompts[ev["path"]] = (ev.get("prompt"), ev.get("step"))
    by_step: dict[int, list[Path]] = {}
    root = run_dir / "samples"
    for d in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir():
            step = int(m.group(1))
            if max_step is None or step <= max_step:
                imgs = sorted(p for p in d.iterdir()
                              if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
                              and p.is_file() and not p.is_symlink())
                if imgs:
                    by_step[step] = imgs
    if not by_step:
        return []
    step = max(by_step)
    out = []
    for p in by_step[step][:MAX_SAMPLES]:
        rel = p.relative_to(run_dir).as_posix()
        prompt, _ = prompts.get(rel, (None, None))
        if prompt is None:
            prompt = _png_prompt(p)
        out.append(SampleImage(p, rel, prompt, step))
    return out


def _png_prompt(path: Path) -> str | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            text = getattr(im, "text", {}) or {}
    except Exception:
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


def collect_run_files(run_dir: str | Path, checkpoint: int | None = None) -> RunFiles:
    """Resolve what to share from ``run_dir``; raises :class:`ShareError` (one sentence) when the
    run has nothing to share. Call :meth:`RunFiles.cleanup` when done."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise ShareError(f"The run folder {run} does not exist; pick a training run.")
    rf = RunFiles(run_dir=run, checkpoint=checkpoint)
    if (run / "config.yaml").is_file():
        rf.config = _load_yaml(run / "config.yaml")
        rf.files["config.yaml"] = run / "config.yaml"
    if (run / "manifest.json").is_file():
        rf.manifest = _load_json(run / "manifest.json")
        rf.files["manifest.json"] = run / "manifest.json"
    if (run / "README.md").is_file():
        rf.card_text = (run / "README.md").read_text(encoding="utf-8", errors="replace")

    if checkpoint is None:
        lora = run / LORA_FILE
        if not lora.is_file():
            steps = list_checkpoints(run)
            hint = (f"; push a checkpoint instead (--checkpoint {steps[-1]})" if steps
                    else "; finish training first")
            raise ShareError(f"The run {run.name} has no final LoRA ({LORA_FILE}){hint}.")
        rf.files[LORA_FILE] = lora
        if (run / KOHYA_FILE).is_file():
            rf.files[KOHYA_FILE] = run / KOHYA_FILE
        else:
            log.warning("run %s has no %s; sharing the diffusers LoRA only", run, KOHYA_FILE)
        max_step = None
    else:
        step = int(checkpoint)
        ck = checkpoint_dir(run, step)
        if not (ck / LORA_FILE).is_file() or not (ck / "COMPLETE").exists():
            have = ", ".join(str(s) for s in list_checkpoints(run)) or "none"
            raise ShareError(f"The run {run.name} has no complete checkpoint at step {step} "
                             f"(complete checkpoints: {have}).")
        rf.files[LORA_FILE] = ck / LORA_FILE
        if (ck / KOHYA_FILE).is_file():
            rf.files[KOHYA_FILE] = ck / KOHYA_FILE
        else:
            rf._tmp = tempfile.TemporaryDirectory(prefix="studio-share-")
            out = Path(rf._tmp.name) / KOHYA_FILE
            from studio.share.kohya import diffusers_to_kohya

            try:
                diffusers_to_kohya(ck / LORA_FILE, out)
                rf.files[KOHYA_FILE] = out
            except ShareError:
                rf.cleanup()
                raise
        max_step = step
    rf.samples = _pick_samples(run, max_step)
    for s in rf.samples:
        rf.files[s.repo_path] = s.path
    return rf


def trigger_info(rf: RunFiles) -> dict[str, Any]:
    """Trigger word, class word, instance prompt, base model and rank read from manifest/config."""
    src = [rf.manifest, rf.config]

    def get(*keys):
        for d in src:
            v = find_value(d, *keys)
            if v not in (None, ""):
                return v
        return None

    trigger = get("trigger", "trigger_word", "token")
    class_word = get("class_word", "class")
    instance = get("instance_prompt")
    if not instance and trigger:
        instance = f"a photo of {trigger} {class_word or 'person'}"
    base = get("base_model", "base", "pretrained_model_name_or_path", "model")
    if not isinstance(base, str) or not base:
        base = "stabilityai/stable-diffusion-xl-base-1.0"
    return {"trigger": trigger, "class_word": class_word, "instance_prompt": instance,
            "base_model": base, "rank": get("rank", "lora_rank", "r"),
            "steps": get("max_train_steps", "max_steps", "steps"),
            "license": get("license")}
