"""Background training jobs: a queue in the workspace registry, one training at a time.

A job is one run folder (``STUDIO_HOME/runs/NAME``) trained by ``python -m studio train`` in a
subprocess with its own session and process group, so a browser refresh, a closed tab or an app
restart never kills it. Its stdout/stderr go to ``RUN/train.log``; the trainer writes
``RUN/events.jsonl`` (see the run-folder contract).

States: ``queued -> running -> finished | failed | cancelled``. Failed and cancelled jobs can be
resumed (``--resume latest`` when a complete checkpoint exists).

:func:`Runner.reconcile` is the whole scheduler: it checks running jobs against reality (exit
code of our own children; for processes started by an earlier app process, the pid and its
start time, then the run's ``end`` event) and launches the oldest queued job when nothing runs.
It runs inside one ``BEGIN IMMEDIATE`` SQLite transaction, so two app processes (or an app and
``python -m studio jobs``) calling it at the same time never start two trainings. The app calls
it from a daemon thread every second (:meth:`Runner.start_scheduler`).
"""

from __future__ import annotations

import contextlib
import json
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.fsutil import atomic_write_text, parse_json_lines
from studio.jobs.process import proc_start_token, process_alive
from studio.workspace import Workspace, WorkspaceError, safe_name, slugify

log = logging.getLogger(__name__)

STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE = ("queued", "running")
EXIT_CANCELLED = 3  # the trainer's exit code after a SIGTERM/SIGINT and a saved checkpoint
_ENDED = {"finished": "finished", "cancelled": "been cancelled", "failed": "failed"}
LOG_NAME = "train.log"
# The command that takes the ``train`` CLI's arguments; None means ``python -m studio train``
# (or ``accelerate launch ... -m studio train`` with several GPUs).
DEFAULT_TRAINER_CMD: list[str] | None = None

JOBS_SQL = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_name TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    dataset TEXT NOT NULL,
    preset TEXT,
    config_path TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    pgid INTEGER,
    proc_start TEXT,
    created REAL NOT NULL,
    queued REAL NOT NULL,
    started REAL,
    ended REAL,
    exit_code INTEGER,
    error TEXT,
    resumable INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    cancel_requested REAL,
    log_offset INTEGER NOT NULL DEFAULT 0,
    events_offset INTEGER NOT NULL DEFAULT 0,
    command TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, queued);
CREATE INDEX IF NOT EXISTS jobs_run ON jobs(run_dir)
"""


class JobError(StudioError, ValueError):
    """A job request the user must change (one sentence)."""




@dataclass
class Job:
    """One row of the ``jobs`` table."""

    id: int
    run_name: str
    run_dir: str
    dataset: str
    preset: str | None
    config_path: str
    state: str
    pid: int | None
    pgid: int | None
    proc_start: str | None
    created: float
    queued: float
    started: float | None
    ended: float | None
    exit_code: int | None
    error: str | None
    resumable: int
    resume: int
    cancel_requested: float | None
    log_offset: int
    events_offset: int
    command: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def log_path(self) -> Path:
        return Path(self.run_dir) / LOG_NAME

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---- run folder reading (no monitor import: keep this module small) ---------------------------
def _read_events_from(path: Path, offset: int = 0) -> list[dict]:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, offset))
            data = fh.read()
    except OSError:
        return []
    return parse_json_lines(data.split(b"\n"))


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (with the ``COMPLETE`` marker) of a run, by step."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "COMPLETE").exists():
            out.append((int(m.group(1)), p))
    return [p for _, p in sorted(out)]


_NOISE = re.compile(r"^(\s|Traceback \(most recent call last\)|During handling|The above exception"
                    r"|=== |\d+%\||.*\|\s*\d+/\d+ \[)")


def last_meaningful_line(text: str) -> str | None:
    """The last line of a log that says something: not a traceback frame, a progress bar, a
    blank line or a runner header."""
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


def failure_cause(run_dir: str | Path, exit_code: int | None, events_offset: int = 0,
                  log_offset: int = 0) -> str:
    """One line saying why a training attempt failed: the trainer's last ``error`` event, else
    the last meaningful line of the log, else what the exit code means."""
    run_dir = Path(run_dir)
    errors = [e for e in _read_events_from(run_dir / "events.jsonl", events_offset)
              if e.get("type") == "error" and e.get("message")]
    if errors:
        return str(errors[-1]["message"]).strip().splitlines()[0][:400]
    if not (run_dir / "config.yaml").exists() and not run_dir.exists():
        return f"The run folder {run_dir} was deleted while the training ran."
    try:
        with open(run_dir / LOG_NAME, "rb") as fh:
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


def end_event(run_dir: str | Path, events_offset: int = 0) -> dict | None:
    ends = [e for e in _read_events_from(Path(run_dir) / "events.jsonl", events_offset)
            if e.get("type") == "end"]
    return ends[-1] if ends else None


# ---- config ------------------------------------------------------------------------------------
ConfigResolver = Callable[..., str]


def resolve_train_config(dataset: Path, preset: str | None, overrides: Sequence[str],
                         base: str | None = None, run_dir: Path | None = None) -> str:
    """The full training config as YAML, from the trainer's ``studio.config.load_config``:
    preset <- the app's base model <- the user's overrides <- the dataset and run folder."""
    try:
        from studio.config import load_config
    except ImportError as exc:
        raise JobError("The trainer (studio.config) is not installed in this build, so no "
                       "training can be started.") from exc
    ovr = [f"model.base={base}"] if base else []
    ovr += [o for o in overrides if o.strip()]
    ovr.append(f"data.dataset={dataset}")
    if run_dir is not None:
        ovr.append(f"output_dir={run_dir}")
    try:
        cfg = load_config(preset=preset or None, config_path=None, overrides=ovr)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError: one line naming the key
        raise JobError(str(exc).strip().splitlines()[0]) from exc
    return cfg.to_yaml()


# ---- the runner --------------------------------------------------------------------------------
class Runner:
    """The job manager of one workspace. Safe to use from several threads and processes."""

    def __init__(self, workspace: Workspace, *, env: dict[str, str] | None = None,
                 trainer_cmd: Sequence[str] | None = None, num_gpus: int | None = None,
                 config_resolver: ConfigResolver | None = None, base: str | None = None,
                 kill_after_s: float = 600.0):
        """``trainer_cmd`` is the command prefix that takes the ``train`` CLI's arguments
        (default ``python -m studio train``); ``num_gpus`` > 1 launches through
        ``accelerate launch`` (default: env ``STUDIO_NUM_GPUS``, else 1)."""
        self.ws = workspace
        self.ws.ensure_tables(JOBS_SQL)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.env.setdefault("STUDIO_HOME", str(workspace.home))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.trainer_cmd = list(trainer_cmd) if trainer_cmd else (
            list(DEFAULT_TRAINER_CMD) if DEFAULT_TRAINER_CMD else None)
        if num_gpus is None:
            try:
                num_gpus = int(self.env.get("STUDIO_NUM_GPUS") or 1)
            except ValueError:
                num_gpus = 1
        self.num_gpus = max(1, num_gpus)
        self.config_resolver = config_resolver or resolve_train_config
        self.base = base
        self.kill_after_s = kill_after_s
        self._procs: dict[int, subprocess.Popen] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- queries ---------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self.ws.db() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"There is no job {job_id}; `python -m studio jobs list` shows them.")
        return Job.from_row(row)

    def list(self, states: Sequence[str] | None = None) -> list[Job]:
        """Jobs, newest first."""
        with self.ws.db() as conn:
            if states:
                q = ",".join("?" * len(states))
                rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({q}) ORDER BY id DESC",
                                    tuple(states)).fetchall()
            else:
                rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
        return [Job.from_row(r) for r in rows]

    def job_for_run(self, run_dir: str | Path) -> Job | None:
        with self.ws.db() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE run_dir=? ORDER BY id DESC LIMIT 1",
                               (str(Path(run_dir)),)).fetchone()
        return Job.from_row(row) if row else None

    def queue_position(self, job: Job) -> int:
        """1 for the next queued job to start, 2 for the one after, ..."""
        with self.ws.db() as conn:
            n = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND "
                             "(queued < ? OR (queued = ? AND id < ?))",
                             (job.queued, job.queued, job.id)).fetchone()[0]
        return int(n) + 1

    # ---- submit ----------------------------------------------------------------------------
    def new_run_name(self, dataset: Path, preset: str | None) -> str:
        stem = slugify(f"{dataset.name}-{Path(preset).stem if preset else 'custom'}", "run")[:50]
        base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 2
        while (self.ws.runs_dir / name).exists():
            name, i = f"{base}-{i}", i + 1
        return name

    def submit(self, dataset: str | Path, preset: str | None = None,
               overrides: Sequence[str] = (), run_name: str | None = None,
               config_text: str | None = None) -> Job:
        """Resolve the config, write it to ``RUN/config.yaml`` and queue the job. The job starts
        when the scheduler next runs (at once if nothing else is training)."""
        dataset = Path(str(dataset).strip()).expanduser()
        if not str(dataset).strip() or str(dataset) == ".":
            raise JobError("Choose a dataset (from the Dataset step or a folder path).")
        if not dataset.is_dir():
            raise JobError(f"The dataset folder {dataset} does not exist.")
        dataset = dataset.resolve()
        try:
            name = safe_name(run_name, "run name") if run_name else \
                self.new_run_name(dataset, preset)
        except WorkspaceError as exc:
            raise JobError(str(exc)) from exc
        run_dir = self.ws.run_path(name).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            raise JobError(f"A run named {name!r} already exists; pick another name.")
        text = config_text if config_text is not None else \
            self.config_resolver(dataset, preset, list(overrides), base=self.base,
                                 run_dir=run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / "config.yaml"
        atomic_write_text(config_path, text)
        now = time.time()
        with self.ws.db() as conn:
            cur = conn.execute(
                "INSERT INTO jobs(run_name, run_dir, dataset, preset, config_path, state, created,"
                " queued) VALUES (?,?,?,?,?,?,?,?)",
                (name, str(run_dir), str(dataset), preset, str(config_path), "queued", now, now))
            job_id = int(cur.lastrowid)
        self.ws.register_run(name, run_dir, {"dataset": str(dataset), "preset": preset,
                                             "job": job_id})
        log.info("queued job %s: run %s (dataset %s, preset %s)", job_id, name, dataset, preset)
        return self.get(job_id)

    # ---- cancel / resume -------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        """Queued: cancelled at once. Running: SIGTERM to its process group (the trainer saves a
        checkpoint and exits with code 3; the scheduler then marks it cancelled)."""
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job.state == "queued":
                conn.execute("UPDATE jobs SET state='cancelled', ended=?, resumable=1 WHERE id=?",
                             (time.time(), job.id))
            elif job.state == "running":
                end = end_event(job.run_dir, job.events_offset)
                if end is not None:  # the trainer already ended (it is only exiting): no signal
                    raise JobError(f"Job {job.id} has already {_ENDED.get(end.get('status'), 'ended')}"
                                   "; there is nothing to cancel.")
                if job.cancel_requested is None:
                    conn.execute("UPDATE jobs SET cancel_requested=? WHERE id=?",
                                 (time.time(), job.id))
                self._signal(job, signal.SIGTERM)
            else:
                raise JobError(f"Job {job.id} is {job.state}; only queued or running jobs can be "
                               "cancelled.")
        log.info("cancel requested for job %s", job_id)
        return self.get(job_id)

    def resume(self, job_id: int) -> Job:
        """Queue a failed or cancelled job again; it continues from its last complete
        checkpoint (``--resume latest``), or starts over when it has none."""
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job.state not in ("failed", "cancelled"):
                raise JobError(f"Job {job.id} is {job.state}; only failed or cancelled jobs can "
                               "be resumed.")
            if not Path(job.config_path).is_file():
                raise JobError(f"The run folder of job {job.id} ({job.run_dir}) has no "
                               "config.yaml any more, so it cannot be resumed.")
            conn.execute(
                "UPDATE jobs SET state='queued', queued=?, pid=NULL, pgid=NULL, proc_start=NULL, "
                "started=NULL, ended=NULL, exit_code=NULL, error=NULL, resumable=0, resume=1, "
                "cancel_requested=NULL WHERE id=?", (time.time(), job.id))
        return self.get(job_id)

    def delete_queued(self, job_id: int) -> None:
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job.state in ACTIVE:
                raise JobError(f"Job {job.id} is {job.state}; cancel it first.")
            conn.execute("DELETE FROM jobs WHERE id=?", (job.id,))

    # ---- the scheduler ---------------------------------------------------------------------
    def reconcile(self) -> list[Job]:
        """Bring the registry in line with reality and start the next queued job when no job
        runs. Safe to call from any thread or process at any time; returns the jobs it changed
        or started."""
        changed: list[int] = []
        with self._lock, self._tx() as conn:
            running = [Job.from_row(r) for r in
                       conn.execute("SELECT * FROM jobs WHERE state='running'").fetchall()]
            still_running = 0
            for job in running:
                if self._check_running(conn, job):
                    changed.append(job.id)
                else:
                    still_running += 1
            running_ids = {j.id for j in running}
            for jid, proc in list(self._procs.items()):  # reap children another process settled
                if jid not in running_ids and proc.poll() is not None:
                    self._procs.pop(jid, None)
            if still_running == 0:
                row = conn.execute("SELECT * FROM jobs WHERE state='queued' "
                                   "ORDER BY queued, id LIMIT 1").fetchone()
                if row is not None:
                    self._launch(conn, Job.from_row(row))
                    changed.append(row["id"])
        return [self.get(i) for i in changed]

    def _check_running(self, conn: sqlite3.Connection, job: Job) -> bool:
        """Update a running job whose process ended; True when it changed state."""
        proc = self._procs.get(job.id)
        exit_code: int | None = None
        if proc is not None and proc.pid == job.pid:
            exit_code = proc.poll()
            if exit_code is None:
                self._maybe_escalate(job)
                return False
            self._procs.pop(job.id, None)
        elif process_alive(job.pid, job.proc_start):
            self._maybe_escalate(job)
            return False  # started by another (or an earlier) app process: keep monitoring it
        state, resumable, error = self._outcome(job, exit_code)
        conn.execute("UPDATE jobs SET state=?, ended=?, exit_code=?, error=?, resumable=? "
                     "WHERE id=?", (state, time.time(), exit_code, error, int(resumable), job.id))
        log.info("job %s %s (exit %s)%s", job.id, state, exit_code, f": {error}" if error else "")
        return True

    def _outcome(self, job: Job, exit_code: int | None) -> tuple[str, bool, str | None]:
        end = end_event(job.run_dir, job.events_offset)
        status = end.get("status") if end is not None else None
        # The run's own end event wins over the exit code: a trainer that saved its LoRA and
        # wrote "finished" is finished even when a late signal (a cancel clicked as it was
        # exiting) ended its process with a non-zero code.
        if status == "finished":
            return "finished", False, None
        if status == "cancelled":
            return "cancelled", True, None
        if exit_code is None and end is not None:  # not our child: the run says how it ended
            return "failed", True, failure_cause(job.run_dir, None, job.events_offset,
                                                 job.log_offset)
        if exit_code == 0:
            return "finished", False, None
        if exit_code == EXIT_CANCELLED or (job.cancel_requested and exit_code is not None):
            return "cancelled", True, None
        if exit_code is None and job.cancel_requested:
            return "cancelled", True, None
        return "failed", True, failure_cause(job.run_dir, exit_code, job.events_offset,
                                             job.log_offset)

    def _maybe_escalate(self, job: Job) -> None:
        if job.cancel_requested and time.time() - job.cancel_requested > self.kill_after_s:
            log.warning("job %s did not stop %.0f s after the cancel; killing it", job.id,
                        self.kill_after_s)
            self._signal(job, signal.SIGKILL)

    def command_for(self, job: Job) -> list[str]:
        args = ["--config", job.config_path, "--dataset", job.dataset, "--out", job.run_dir]
        if job.resume and complete_checkpoints(job.run_dir):
            args += ["--resume", "latest"]
        if self.trainer_cmd:
            return [*self.trainer_cmd, *args]
        if self.num_gpus > 1:
            return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
                    str(self.num_gpus), "-m", "studio", "train", *args]
        return [sys.executable, "-m", "studio", "train", *args]

    def _launch(self, conn: sqlite3.Connection, job: Job) -> None:
        run_dir = Path(job.run_dir)
        cmd = self.command_for(job)
        log_path = run_dir / LOG_NAME
        events = run_dir / "events.jsonl"
        now = time.time()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as fh:
                fh.write(f"=== job {job.id} {'resumed' if job.resume else 'started'} "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(cmd)}\n".encode())
                log_offset = fh.tell()
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env,
                                        cwd=str(Path(__file__).resolve().parents[2]),
                                        start_new_session=True, close_fds=True)
        except OSError as exc:
            error = f"The training could not be started: {exc.strerror or exc}."
            conn.execute("UPDATE jobs SET state='failed', started=?, ended=?, error=?, "
                         "resumable=1, command=? WHERE id=?",
                         (now, now, error, shlex.join(cmd), job.id))
            log.error("job %s: %s", job.id, error)
            return
        self._procs[job.id] = proc
        conn.execute(
            "UPDATE jobs SET state='running', pid=?, pgid=?, proc_start=?, started=?, "
            "log_offset=?, events_offset=?, command=?, cancel_requested=NULL WHERE id=?",
            (proc.pid, proc.pid, proc_start_token(proc.pid), now, log_offset, _file_size(events),
             shlex.join(cmd), job.id))
        log.info("job %s started (pid %s): %s", job.id, proc.pid, shlex.join(cmd))

    def _signal(self, job: Job, sig: int) -> None:
        if not job.pgid or not process_alive(job.pid, job.proc_start):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(job.pgid), sig)

    def start_scheduler(self, interval_s: float = 1.0) -> None:
        """Reconcile now, then every ``interval_s`` in a daemon thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._safe_reconcile()
            self._thread = threading.Thread(target=self._loop, args=(interval_s,),
                                            name="studio-train-scheduler", daemon=True)
            self._thread.start()

    def stop_scheduler(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._safe_reconcile()

    def _safe_reconcile(self) -> None:
        try:
            self.reconcile()
        except Exception:  # the scheduler must outlive any single bad row or full disk
            log.exception("job reconcile failed")

    def wait(self, job_id: int, states: Sequence[str] = ("finished", "failed", "cancelled"),
             timeout: float = 600, interval_s: float = 0.2) -> Job:
        """Reconcile until the job reaches one of ``states`` (tests, CLI)."""
        deadline = time.time() + timeout
        while True:
            self.reconcile()
            job = self.get(job_id)
            if job.state in states:
                return job
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(interval_s)

    # ---- helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _tx(self):
        with self.ws.db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
        if row is None:
            raise JobError(f"There is no job {job_id}; `python -m studio jobs list` shows them.")
        return Job.from_row(row)


_RUNNERS: dict[str, Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def get_runner(workspace: Workspace, **kwargs: Any) -> Runner:
    """One shared :class:`Runner` per workspace in this process (keyword arguments apply when
    it is first made)."""
    key = str(Path(workspace.home).resolve())
    with _RUNNERS_LOCK:
        if key not in _RUNNERS:
            _RUNNERS[key] = Runner(workspace, **kwargs)
        return _RUNNERS[key]


# ---- CLI -----------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    p = sub.add_parser("jobs", help="list, cancel or resume background training jobs")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    ls = jsub.add_parser("list", help="all jobs, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    c = jsub.add_parser("cancel", help="cancel a queued or running job (saves a checkpoint)")
    c.add_argument("id", type=int)
    r = jsub.add_parser("resume", help="queue a failed or cancelled job again")
    r.add_argument("id", type=int)
    p.set_defaults(func=_cmd_jobs)


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _cmd_jobs(args) -> int:
    runner = Runner(Workspace())
    if args.jobs_command == "list":
        runner.reconcile()
        jobs = runner.list()
        if args.json:
            for j in jobs:
                print(json.dumps(j.as_dict(), default=str))
            return 0
        if not jobs:
            print("No jobs yet.")
            return 0
        print(f"{'id':>4}  {'state':<9}  {'created':<16}  run")
        for j in jobs:
            extra = f"  ({j.error})" if j.error else ""
            print(f"{j.id:>4}  {j.state:<9}  {_fmt_time(j.created):<16}  {j.run_name}{extra}")
        return 0
    if args.jobs_command == "cancel":
        job = runner.cancel(args.id)
        print(f"job {job.id}: {'cancelled' if job.state == 'cancelled' else 'stop requested'}")
        return 0
    job = runner.resume(args.id)
    changed = runner.reconcile()
    started = any(j.id == job.id and j.state == "running" for j in changed)
    print(f"job {job.id}: {'resumed (running)' if started else 'queued'}")
    return 0
