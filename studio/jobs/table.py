"""The ``jobs`` table of the workspace registry: its schema, the :class:`Job` row, the queries.

This is the one module that spells out the table's SQL. A job is one run folder trained by one
background process at a time. States: ``queued -> running -> finished | failed | cancelled``;
failed and cancelled jobs can be queued again (resumed).

Reads take a connection from ``Workspace.db()``; changes that must not race another scheduler
(another thread, another app process, ``python -m studio jobs``) run inside
:func:`transaction`, one ``BEGIN IMMEDIATE`` SQLite transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.runs.folder import RunFolder
from studio.workspace import Workspace

ENDED = ("finished", "failed", "cancelled")

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
    def folder(self) -> RunFolder:
        """The job's run folder (events, log, checkpoints, config)."""
        return RunFolder(self.run_dir)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def ensure_table(ws: Workspace) -> None:
    ws.ensure_tables(JOBS_SQL)


@contextlib.contextmanager
def transaction(ws: Workspace) -> Iterator[sqlite3.Connection]:
    """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back when it
    raises. Two of them never run at once, in any thread or process."""
    with ws.db() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# ---- reads -----------------------------------------------------------------------------------
def fetch(conn: sqlite3.Connection, job_id: int) -> Job:
    row = conn.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone()
    if row is None:
        raise JobError(f"There is no job {job_id}; `python -m studio jobs list` shows them.")
    return Job.from_row(row)


def fetch_all(conn: sqlite3.Connection, states: Sequence[str] | None = None) -> list[Job]:
    """Jobs in ``states`` (all when empty), newest first."""
    if states:
        q = ",".join("?" * len(states))
        rows = conn.execute(f"SELECT * FROM jobs WHERE state IN ({q}) ORDER BY id DESC",
                            tuple(states)).fetchall()
    else:
        rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
    return [Job.from_row(r) for r in rows]


def latest_for_run(conn: sqlite3.Connection, run_dir: str | Path) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE run_dir=? ORDER BY id DESC LIMIT 1",
                       (str(Path(run_dir)),)).fetchone()
    return Job.from_row(row) if row else None


def queue_position(conn: sqlite3.Connection, job: Job) -> int:
    """1 for the next queued job to start, 2 for the one after, ..."""
    n = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='queued' AND "
                     "(queued < ? OR (queued = ? AND id < ?))",
                     (job.queued, job.queued, job.id)).fetchone()[0]
    return int(n) + 1


def next_queued(conn: sqlite3.Connection) -> Job | None:
    """The queued job that starts next (oldest queue time first)."""
    row = conn.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY queued, id LIMIT 1"
                       ).fetchone()
    return Job.from_row(row) if row else None


# ---- changes ---------------------------------------------------------------------------------
def insert(conn: sqlite3.Connection, *, run_name: str, run_dir: Path, dataset: Path,
           preset: str | None, config_path: Path, now: float) -> int:
    """A new queued job; its id."""
    cur = conn.execute(
        "INSERT INTO jobs(run_name, run_dir, dataset, preset, config_path, state, created, queued)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (run_name, str(run_dir), str(dataset), preset, str(config_path), "queued", now, now))
    return int(cur.lastrowid)


def cancel_queued(conn: sqlite3.Connection, job_id: int, now: float) -> None:
    conn.execute("UPDATE jobs SET state='cancelled', ended=?, resumable=1 WHERE id=?",
                 (now, job_id))


def request_cancel(conn: sqlite3.Connection, job_id: int, now: float) -> None:
    """Note when a running job was first asked to stop (later requests keep the first time)."""
    conn.execute("UPDATE jobs SET cancel_requested=? WHERE id=? AND cancel_requested IS NULL",
                 (now, job_id))


def requeue(conn: sqlite3.Connection, job_id: int, now: float) -> None:
    """Queue an ended job again, to resume from its checkpoints."""
    conn.execute(
        "UPDATE jobs SET state='queued', queued=?, pid=NULL, pgid=NULL, proc_start=NULL, "
        "started=NULL, ended=NULL, exit_code=NULL, error=NULL, resumable=0, resume=1, "
        "cancel_requested=NULL WHERE id=?", (now, job_id))


def set_running(conn: sqlite3.Connection, job_id: int, *, pid: int, proc_start: str | None,
                now: float, log_offset: int, events_offset: int, command: str) -> None:
    conn.execute(
        "UPDATE jobs SET state='running', pid=?, pgid=?, proc_start=?, started=?, "
        "log_offset=?, events_offset=?, command=?, cancel_requested=NULL WHERE id=?",
        (pid, pid, proc_start, now, log_offset, events_offset, command, job_id))


def set_launch_failed(conn: sqlite3.Connection, job_id: int, *, now: float, error: str,
                      command: str) -> None:
    conn.execute("UPDATE jobs SET state='failed', started=?, ended=?, error=?, resumable=1, "
                 "command=? WHERE id=?", (now, now, error, command, job_id))


def delete_for_run(conn: sqlite3.Connection, run_dir: str | Path) -> int:
    """Forget every job of a run (its folder is being deleted); how many there were."""
    return conn.execute("DELETE FROM jobs WHERE run_dir=?", (str(Path(run_dir)),)).rowcount


def set_ended(conn: sqlite3.Connection, job_id: int, *, state: str, now: float,
              exit_code: int | None, error: str | None, resumable: bool) -> None:
    conn.execute("UPDATE jobs SET state=?, ended=?, exit_code=?, error=?, resumable=? WHERE id=?",
                 (state, now, exit_code, error, int(resumable), job_id))
