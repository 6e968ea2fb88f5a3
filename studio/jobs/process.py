"""Process identity for background trainings: a pid plus its start time from /proc, so a
reused pid is never mistaken for the training that had it, and signalling a training's process
group. Imports nothing from the studio (the run monitor uses it without the scheduler)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def proc_start_token(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), or None when the
    process does not exist or is a zombie. Together with the pid it identifies one process even
    after the pid is reused."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    rest = stat.rsplit(")", 1)[-1].split()
    if not rest or rest[0] in ("Z", "X", "x"):
        return None
    return rest[19] if len(rest) > 19 else ""


def process_alive(pid: int | None, start_token: str | None = None) -> bool:
    """True when ``pid`` runs and is the same process that had ``start_token`` (pid reuse)."""
    if not pid:
        return False
    if Path("/proc/self/stat").exists():
        tok = proc_start_token(pid)
        if tok is None:
            return False
        if start_token:
            return tok == start_token
        try:  # no start time recorded: at least it must be a studio training
            cmd = Path(f"/proc/{int(pid)}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return b"studio" in cmd and b"train" in cmd
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int | None, pid: int | None, start_token: str | None, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid`` while its leader ``pid`` (with
    ``start_token``) still runs; never to a group whose leader is gone (its id may be reused)."""
    if not pgid or not process_alive(pid, start_token):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(pgid), sig)
