"""The consistency check of a finished run folder: ``check_run_folder(run_dir)`` lists what is
wrong with it (nothing for a healthy run).

It checks that config.yaml loads, that the manifest's files match the files (sha256 and bytes),
that every complete checkpoint is intact (:func:`studio.runs.checkpoints.validate_checkpoint`),
that no temp folder of a save is left, that the last "end" event says finished, and that the
step events cover 1..N without a gap (a step logged twice, re-run after a resume from an older
checkpoint, counts once), N being the manifest's step count.
"""

from __future__ import annotations

import os
from typing import Any

from studio.errors import first_line
from studio.runs import checkpoints as ckpt
from studio.runs.folder import RunFolder


def _manifest_problems(run: RunFolder) -> tuple[list[str], dict[str, Any]]:
    try:
        manifest = run.manifest()
    except Exception as exc:
        return [f"manifest does not load: {first_line(exc)}"], {}
    if not manifest:
        return ["manifest is missing"], {}
    problems = []
    files = manifest.get("files") or {}
    if not files:
        problems.append("manifest lists no files")
    for name, want in files.items():
        f = run.path / name
        if not f.is_file():
            problems.append(f"manifest file {name} is missing")
        elif f.stat().st_size != want.get("bytes"):
            problems.append(f"manifest file {name} has {f.stat().st_size} bytes, the manifest "
                            f"says {want.get('bytes')}")
        elif ckpt.sha256_file(f) != want.get("sha256"):
            problems.append(f"manifest file {name} does not match its sha256")
    return problems, manifest


def _event_problems(run: RunFolder, steps_expected: int | None) -> list[str]:
    events = run.events()
    problems = []
    ends = [e for e in events if e.get("type") == "end"]
    if not ends or ends[-1].get("status") != "finished":
        problems.append(f"the last end event is {ends[-1].get('status') if ends else 'missing'}, "
                        "not finished")
    steps = sorted({int(e["step"]) for e in events if e.get("type") == "step"})
    last = steps_expected if steps_expected is not None else (steps[-1] if steps else 0)
    missing = sorted(set(range(1, last + 1)) - set(steps))
    if missing:
        problems.append(f"step events are missing for steps {missing[:10]}")
    if steps and steps[-1] > last:
        problems.append(f"step events go to {steps[-1]}, past the run's {last} steps")
    return problems


def check_run_folder(run_dir: str | os.PathLike) -> list[str]:
    """What is inconsistent in the finished run folder ``run_dir`` (one phrase each)."""
    run = RunFolder(run_dir)
    problems: list[str] = []
    try:
        run.config()
    except Exception as exc:
        problems.append(f"config does not load: {first_line(exc)}")
    found, manifest = _manifest_problems(run)
    problems += found
    for _, folder in ckpt.list_checkpoints(run.path):
        bad = ckpt.validate_checkpoint(folder)
        if bad:
            problems.append(f"checkpoint {bad}")
    if run.checkpoints_dir.is_dir():
        problems += [f"a save left {p.name}" for p in run.checkpoints_dir.glob(".tmp-*")]
    steps = manifest.get("steps")
    problems += _event_problems(run, int(steps) if isinstance(steps, int) else None)
    return problems
