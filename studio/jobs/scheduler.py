"""The scheduler of background trainings: one training at a time, from the ``jobs`` table.

A job trains its run folder with ``python -m studio train`` (or ``accelerate launch ... -m studio
train`` with several GPUs) in a subprocess with its own session and process group, so a browser
refresh, a closed tab or an app restart never kills it. Its stdout/stderr go to the run's log;
the trainer writes the run's events (see :class:`~studio.runs.folder.RunFolder`).

:meth:`Scheduler.reconcile` is the whole scheduler: it checks running jobs against reality (exit
code of our own children; for processes started by an earlier app process, the pid and its start
time, then the run's ``end`` event) and launches the oldest queued job when nothing runs. It runs
inside one ``BEGIN IMMEDIATE`` SQLite transaction, so two app processes (or an app and
``python -m studio jobs``) calling it at the same time never start two trainings. The app calls
it from a daemon thread every second (:meth:`Scheduler.start`), with or without the UI.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from studio.jobs import table
from studio.jobs.process import proc_start_token, process_alive, signal_group
from studio.jobs.table import Job
from studio.runs.folder import RunFolder
from studio.workspace import Workspace

log = logging.getLogger(__name__)

EXIT_CANCELLED = 3  # the trainer's exit code after a SIGTERM/SIGINT and a saved checkpoint
_REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- why a job ended -------------------------------------------------------------------------
_NOISE = re.compile(r"^(\s|Traceback \(most recent call last\)|During handling|The above exception"
                    r"|=== |\d+%\||.*\|\s*\d+/\d+ \[)")


def last_meaningful_line(text: str) -> str | None:
    """The last line of a log that says something: not a traceback frame, a progress bar, a
    blank line or a job header."""
    for raw in reversed(text.splitlines()):
        line = raw.split("\r")[-1].rstrip()
        if not line.strip() or _NOISE.match(line):
            continue
        if line.startswith(("WARNING", "warnings.warn", "  warnings.warn")):
            continue
        return line.strip()[:400]
    return None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def failure_cause(run_dir: str | Path | RunFolder, exit_code: int | None, events_offset: int = 0,
                  log_offset: int = 0) -> str:
    """One line saying why a training attempt failed: the trainer's last ``error`` event, else
    the last meaningful line of the log, else what the exit code means."""
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    errors = [e for e in folder.events(events_offset)
              if e.get("type") == "error" and e.get("message")]
    if errors:
        return str(errors[-1]["message"]).strip().splitlines()[0][:400]
    if not folder.path.exists():
        return f"The run folder {folder.path} was deleted while the training ran."
    try:
        with open(folder.log_path, "rb") as fh:
            fh.seek(max(0, log_offset))
            tail = fh.read()[-65536:].decode("utf-8", "replace")
    except OSError:
        tail = ""
    line = last_meaningful_line(tail)
    if line:
        return line
    if exit_code is None:
        return "The training process stopped without writing an end event (the machine or the " \
               "process was killed); resume continues from the last checkpoint."
    if exit_code < 0:
        sig = _signal_name(exit_code)
        hint = " (often the system running out of memory)" if exit_code == -signal.SIGKILL else ""
        return f"The training process was killed by {sig}{hint} without an error message."
    return f"The training process exited with code {exit_code} without an error message."


def outcome(job: Job, exit_code: int | None) -> tuple[str, bool, str | None]:
    """(state, resumable, error) of a job whose process ended; ``exit_code`` is None when the
    process was not our child (its code is unknown)."""
    folder = job.folder
    end = folder.end_event(job.events_offset)
    status = end.get("status") if end is not None else None
    # The run's own end event wins over the exit code: a trainer that saved its LoRA and
    # wrote "finished" is finished even when a late signal (a cancel clicked as it was
    # exiting) ended its process with a non-zero code.
    if status == "finished":
        return "finished", False, None
    if status == "cancelled":
        return "cancelled", True, None
    if exit_code is None and end is not None:  # not our child: the run says how it ended
        return "failed", True, failure_cause(folder, None, job.events_offset, job.log_offset)
    if exit_code == 0:
        return "finished", False, None
    if exit_code == EXIT_CANCELLED or (job.cancel_requested and exit_code is not None):
        return "cancelled", True, None
    if exit_code is None and job.cancel_requested:
        return "cancelled", True, None
    return "failed", True, failure_cause(folder, exit_code, job.events_offset, job.log_offset)


# ---- the scheduler ---------------------------------------------------------------------------
class Scheduler:
    """Starts and watches the trainings of one workspace. Safe from several threads and
    processes; ``procs`` holds the trainings this object started (its children)."""

    def __init__(self, workspace: Workspace, *, env: dict[str, str] | None = None,
                 trainer_cmd: Sequence[str] | None = None, num_gpus: int | None = None,
                 kill_after_s: float = 600.0):
        """``trainer_cmd`` is the command prefix that takes the ``train`` CLI's arguments
        (default ``python -m studio train``); ``num_gpus`` > 1 launches through
        ``accelerate launch`` (default: env ``STUDIO_NUM_GPUS``, else 1)."""
        self.ws = workspace
        self.env = dict(env) if env is not None else dict(os.environ)
        self.env.setdefault("STUDIO_HOME", str(workspace.home))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.trainer_cmd = list(trainer_cmd) if trainer_cmd else None
        if num_gpus is None:
            try:
                num_gpus = int(self.env.get("STUDIO_NUM_GPUS") or 1)
            except ValueError:
                num_gpus = 1
        self.num_gpus = max(1, num_gpus)
        self.kill_after_s = kill_after_s
        self.procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def reconcile(self) -> list[int]:
        """Bring the table in line with reality and start the next queued job when no job
        runs; the ids of the jobs it changed or started."""
        changed: list[int] = []
        with self._lock, table.transaction(self.ws) as conn:
            running = table.fetch_all(conn, ["running"])
            still_running = 0
            for job in running:
                if self._check_running(conn, job):
                    changed.append(job.id)
                else:
                    still_running += 1
            running_ids = {j.id for j in running}
            for jid, proc in list(self.procs.items()):  # reap children another process settled
                if jid not in running_ids and proc.poll() is not None:
                    self.procs.pop(jid, None)
            if still_running == 0:
                job = table.next_queued(conn)
                if job is not None:
                    self._launch(conn, job)
                    changed.append(job.id)
        return changed

    def _check_running(self, conn: sqlite3.Connection, job: Job) -> bool:
        """Update a running job whose process ended; True when it changed state."""
        proc = self.procs.get(job.id)
        exit_code: int | None = None
        if proc is not None and proc.pid == job.pid:
            exit_code = proc.poll()
            if exit_code is None:
                self._maybe_escalate(job)
                return False
            self.procs.pop(job.id, None)
        elif process_alive(job.pid, job.proc_start):
            self._maybe_escalate(job)
            return False  # started by another (or an earlier) app process: keep monitoring it
        state, resumable, error = outcome(job, exit_code)
        table.set_ended(conn, job.id, state=state, now=time.time(), exit_code=exit_code,
                        error=error, resumable=resumable)
        log.info("job %s %s (exit %s)%s", job.id, state, exit_code, f": {error}" if error else "")
        return True

    def _maybe_escalate(self, job: Job) -> None:
        """SIGKILL a training that has not stopped ``kill_after_s`` after its cancel."""
        if job.cancel_requested and time.time() - job.cancel_requested > self.kill_after_s:
            log.warning("job %s did not stop %.0f s after the cancel; killing it", job.id,
                        self.kill_after_s)
            signal_group(job.pgid, job.pid, job.proc_start, signal.SIGKILL)

    def command_for(self, job: Job) -> list[str]:
        args = ["--config", job.config_path, "--dataset", job.dataset, "--out", job.run_dir]
        if job.resume and job.folder.checkpoints():
            args += ["--resume", "latest"]
        if self.trainer_cmd:
            return [*self.trainer_cmd, *args]
        if self.num_gpus > 1:
            return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                    str(self.num_gpus), "-m", "studio", "train", *args]
        return [sys.executable, "-m", "studio", "train", *args]

    def _launch(self, conn: sqlite3.Connection, job: Job) -> None:
        folder = job.folder
        cmd = self.command_for(job)
        command = shlex.join(cmd)
        now = time.time()
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
            with open(folder.log_path, "ab") as fh:
                fh.write(f"=== job {job.id} {'resumed' if job.resume else 'started'} "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n".encode())
                log_offset = fh.tell()
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env,
                                        cwd=str(_REPO_ROOT), start_new_session=True,
                                        close_fds=True)
        except OSError as exc:
            error = f"The training could not be started: {exc.strerror or exc}."
            table.set_launch_failed(conn, job.id, now=now, error=error, command=command)
            log.error("job %s: %s", job.id, error)
            return
        self.procs[job.id] = proc
        table.set_running(conn, job.id, pid=proc.pid, proc_start=proc_start_token(proc.pid),
                          now=now, log_offset=log_offset, events_offset=folder.events_size(),
                          command=command)
        log.info("job %s started (pid %s): %s", job.id, proc.pid, command)

    # ---- the daemon thread -------------------------------------------------------------------
    def start(self, interval_s: float = 1.0) -> None:
        """Reconcile now, then every ``interval_s`` in a daemon thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._safe_reconcile()
            self._thread = threading.Thread(target=self._loop, args=(interval_s,),
                                            name="studio-train-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (the trainings go on; a later start re-adopts them)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._safe_reconcile()

    def _safe_reconcile(self) -> None:
        try:
            self.reconcile()
        except Exception:  # the scheduler must outlive any single bad row or full disk
            log.exception("job reconcile failed")
