"""Resumable checkpoints: ``RUN/checkpoints/checkpoint-<step:06d>/``.

Each checkpoint holds ``pytorch_lora_weights.safetensors`` (diffusers format, loadable by
``StableDiffusionXLPipeline.load_lora_weights``), ``training_state.pt`` (LoRA in PEFT format,
optimizer, LR scheduler, RNG states, step, epoch, loss history, wall time) and a ``COMPLETE``
marker. It is written into ``checkpoints/.tmp-checkpoint-<step>-<pid>/``, the marker is written
last, and the folder is renamed into place in one step, so a kill at any moment leaves either
the complete checkpoint or none. ``total_limit`` prunes the oldest checkpoints only after the new
one is complete. Free disk is checked before writing.

The marker records every file's size and sha256 (``step N`` on the first line, then one JSON
object). ``--resume latest`` validates the checkpoint it picks (:func:`validate_checkpoint`: the
sizes and hashes match and every file loads) and falls back to the previous complete one when it
is bad; a bad checkpoint named explicitly is refused. A full disk while writing is a
:class:`CheckpointError` naming the checkpoints that are intact (:func:`disk_full_guard`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_marker(folder: Path) -> dict[str, dict] | None:
    """{file name: {"bytes", "sha256"}} the COMPLETE marker of ``folder`` records; None for a
    marker written before hashes were recorded."""
    lines = (folder / MARKER).read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        files = json.loads(lines[1])["files"] if len(lines) > 1 else None
    except (ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def _load_problem(path: Path) -> str | None:
    """Why ``path`` does not load (safetensors / torch files), or None."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        elif path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        return f"does not load ({type(exc).__name__})"
    return None


def validate_checkpoint(folder: Path) -> str | None:
    """None when the checkpoint ``folder`` is intact, else one clause naming the bad file:
    every recorded file is there with its size and sha256, and every file loads."""
    if not (folder / MARKER).is_file():
        return f"{folder.name} has no {MARKER} marker"
    if not (folder / STATE_FILE).is_file():
        return f"{folder.name}/{STATE_FILE} is missing"
    recorded = read_marker(folder) or {}
    for name, want in recorded.items():
        f = folder / name
        if not f.is_file():
            return f"{folder.name}/{name} is missing"
        size = f.stat().st_size
        if size != want.get("bytes"):
            return f"{folder.name}/{name} has {size} bytes instead of {want.get('bytes')}"
        if sha256_file(f) != want.get("sha256"):
            return f"{folder.name}/{name} does not match its recorded sha256"
    for f in sorted(folder.iterdir()):
        problem = _load_problem(f) if f.is_file() else None
        if problem:
            return f"{folder.name}/{f.name} {problem}"
    return None


def resolve_resume(run_dir: str | os.PathLike, spec: str,
                   warn: Callable[[str], None] | None = None) -> Path:
    """``latest`` -> the highest complete checkpoint that is intact (each bad one is reported
    through ``warn`` in one line and skipped); a path -> that checkpoint (complete and intact)."""
    if spec == "latest":
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            raise CheckpointError(f"Cannot resume: {Path(run_dir)} has no complete checkpoint "
                                  "(run without --resume to start a new run).")
        problems = []
        for i in range(len(ckpts) - 1, -1, -1):
            problem = validate_checkpoint(ckpts[i][1])
            if problem is None:
                return ckpts[i][1]
            problems.append(problem)
            if warn is not None:
                nxt = f"resuming from {ckpts[i - 1][1].name} instead" if i else "no other checkpoint"
                warn(f"Checkpoint {problem}; {nxt}.")
        raise CheckpointError(f"Cannot resume: no checkpoint of {Path(run_dir)} is intact "
                              f"({'; '.join(problems)}).")
    p = Path(spec).expanduser()
    if not p.is_absolute() and not p.exists():
        p = Path(run_dir) / spec
    if not p.is_dir():
        raise CheckpointError(f"Cannot resume: the checkpoint {spec} does not exist.")
    if not (p / MARKER).is_file() or not (p / STATE_FILE).is_file():
        raise CheckpointError(f"Cannot resume: the checkpoint {spec} is incomplete (no {MARKER} "
                              "marker); use --resume latest.")
    problem = validate_checkpoint(p)
    if problem:
        raise CheckpointError(f"Cannot resume: the checkpoint is damaged ({problem}); use "
                              "--resume latest or another checkpoint.")
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
            f"free, {need_bytes / 2**20:.0f} MiB needed, checkpoints.min_free_mb included); "
            "free some space, or lower checkpoints.min_free_mb or checkpoints.total_limit.")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it came from) is ENOSPC: an OSError with errno 28 or a
    writer's error saying so (safetensors: "No space left on device (os error 28)")."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


@contextlib.contextmanager
def disk_full_guard(run_dir: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a full disk while writing ``what`` (e.g. "checkpoint 30") into one CheckpointError
    sentence naming the checkpoints that are intact."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        steps = [str(s) for s, _ in list_checkpoints(run_dir)]
        intact = ("no checkpoint is complete yet" if not steps else
                  f"checkpoint {steps[0]} is intact" if len(steps) == 1 else
                  f"checkpoints {', '.join(steps[:-1])} and {steps[-1]} are intact")
        raise CheckpointError(f"The disk holding {Path(run_dir)} is full while writing {what}; "
                              f"{intact}; free space and resume with --resume latest.") from exc


def save_checkpoint(run_dir: str | os.PathLike, step: int, write: Callable[[Path], None],
                    total_limit: int | None = None, need_bytes: int = 0) -> Path:
    """Write a checkpoint atomically with ``write(tmp_dir)``; returns the final folder. A full
    disk is a CheckpointError naming the intact checkpoints."""
    check_free_disk(Path(run_dir) / CKPT_DIR, need_bytes)
    with disk_full_guard(run_dir, f"checkpoint {step}"):
        final = _write_atomically(run_dir, step, write)
    if total_limit:
        prune(run_dir, total_limit, keep=final)
    return final


def _write_atomically(run_dir: str | os.PathLike, step: int, write: Callable[[Path], None]) -> Path:
    root = Path(run_dir) / CKPT_DIR
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        delay = float(os.environ.get(DELAY_ENV) or 0)
        if delay > 0:
            time.sleep(delay)
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        with open(tmp / MARKER, "w", encoding="utf-8") as fh:
            fh.write(f"step {step}\n{json.dumps({'files': files}, sort_keys=True)}\n")
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
