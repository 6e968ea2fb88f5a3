"""Resumable checkpoints: ``RUN/checkpoints/checkpoint-<step:06d>/``.

Each checkpoint holds ``pytorch_lora_weights.safetensors`` (diffusers format, loadable by
``StableDiffusionXLPipeline.load_lora_weights``), ``training_state.pt`` (LoRA in PEFT format,
optimizer, LR scheduler, RNG states, step, epoch, loss history, wall time) and a ``COMPLETE``
marker. It is written into ``checkpoints/.tmp-checkpoint-<step>-<pid>/``, the marker is written
last, and the folder is renamed into place in one step, so a kill at any moment leaves either
the complete checkpoint or none. ``total_limit`` prunes the oldest checkpoints only after the new
one is complete. Free disk is checked before writing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from studio.errors import StudioError
from studio.fsutil import _fsync_dir

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
MARKER = "COMPLETE"
STATE_FILE = "training_state.pt"
_NAME_RE = re.compile(r"^checkpoint-(\d+)$")
# Test hook: seconds to sleep inside a save, after the first files are written (kill -9 tests).
DELAY_ENV = "STUDIO_TEST_CHECKPOINT_DELAY"


class CheckpointError(StudioError, RuntimeError):
    """A checkpoint problem meant for the user (one sentence)."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every checkpoint folder of a run, complete or not, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    out: list[tuple[int, Path]] = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        m = _NAME_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run (with the COMPLETE marker), oldest first."""
    return [(s, p) for s, p in checkpoint_dirs(run_dir) if (p / MARKER).is_file()]


def resolve_resume(run_dir: str | os.PathLike, spec: str) -> Path:
    """``latest`` -> the highest complete checkpoint; a path -> that checkpoint (must be complete)."""
    if spec == "latest":
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"Cannot resume: {Path(run_dir)} has no complete checkpoint "
                                  "(run without --resume to start a new run).")
        return ckpts[-1][1]
    p = Path(spec).expanduser()
    if not p.is_absolute() and not p.exists():
        p = Path(run_dir) / spec
    if not p.is_dir():
        raise CheckpointError(f"Cannot resume: the checkpoint {spec} does not exist.")
    if not (p / MARKER).is_file() or not (p / STATE_FILE).is_file():
        raise CheckpointError(f"Cannot resume: the checkpoint {spec} is incomplete (no {MARKER} "
                              "marker); use --resume latest.")
    return p


def clean_partial(run_dir: str | os.PathLike) -> None:
    """Remove temp folders left by a save that was killed."""
    root = Path(run_dir) / CKPT_DIR
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def check_free_disk(path: Path, need_bytes: int) -> None:
    """Raise CheckpointError when ``path``'s disk has less than ``need_bytes`` free."""
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise CheckpointError(
            f"Not enough free disk space in {path} to save a checkpoint ({free / 2**20:.0f} MiB "
            f"free, {need_bytes / 2**20:.0f} MiB needed); free some space or lower "
            "checkpoints.total_limit.")


def save_checkpoint(run_dir: str | os.PathLike, step: int, write: Callable[[Path], None],
                    total_limit: int | None = None, need_bytes: int = 0) -> Path:
    """Write a checkpoint atomically with ``write(tmp_dir)``; returns the final folder."""
    root = Path(run_dir) / CKPT_DIR
    check_free_disk(root, need_bytes)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        with open(tmp / MARKER, "w", encoding="utf-8") as fh:
            fh.write(f"step {step}\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # re-running a step after resuming from an older checkpoint
            old = root / f".tmp-old-{checkpoint_name(step)}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if total_limit:
        prune(run_dir, total_limit, keep=final)
    return final


def prune(run_dir: str | os.PathLike, total_limit: int, keep: Path | None = None) -> None:
    """Delete the oldest complete checkpoints beyond ``total_limit`` (never ``keep`` nor the newest)."""
    ckpts = list_checkpoints(run_dir)
    if len(ckpts) <= total_limit:
        return
    newest = ckpts[-1][1]
    for _, p in ckpts[: len(ckpts) - total_limit]:
        if p in (keep, newest):
            continue
        log.info("removing old checkpoint %s", p.name)
        # Rename first so a kill mid-delete never leaves a half-deleted "complete" checkpoint.
        doomed = p.parent / f".tmp-del-{p.name}"
        os.replace(p, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
