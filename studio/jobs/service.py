"""The training-job service of one workspace: what the UI, the API and the CLI call.

::

    svc = get_service(workspace, env=..., base=...)
    cfg = svc.build_config(dataset_folder, preset="portrait", overrides=["lora.rank=8"])
    job = svc.submit(cfg)                 # RUN/config.yaml written once, job queued
    svc.start_scheduler()                 # the composition root; stop_scheduler() at shutdown

States: ``queued -> running -> finished | failed | cancelled``. Failed and cancelled jobs can be
resumed (``--resume latest`` when a complete checkpoint exists). The table lives in
:mod:`studio.jobs.table`, the processes in :mod:`studio.jobs.scheduler`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.config import TrainConfig, load_config
from studio.errors import first_line
from studio.jobs import table
from studio.jobs.process import signal_group
from studio.jobs.scheduler import Scheduler
from studio.jobs.table import ENDED, Job, JobError
from studio.runs.folder import RunFolder
from studio.workspace import Workspace, WorkspaceError, safe_name, slugify

log = logging.getLogger(__name__)

_ENDED_WORDS = {"finished": "finished", "cancelled": "been cancelled", "failed": "failed"}


def dataset_folder(dataset: str | Path | None) -> Path:
    """The dataset folder a job trains on (resolved); a :class:`JobError` when there is none."""
    text = str(dataset or "").strip()
    path = Path(text).expanduser()
    if not text or str(path) == ".":
        raise JobError("Choose a dataset (from the Dataset step or a folder path).")
    if not path.is_dir():
        raise JobError(f"The dataset folder {path} does not exist.")
    return path.resolve()


class JobService:
    """Background training jobs of one workspace. Safe to use from several threads and
    processes; :func:`get_service` gives the one instance of a workspace in this process."""

    def __init__(self, workspace: Workspace, *, env: dict[str, str] | None = None,
                 trainer_cmd: Sequence[str] | None = None, num_gpus: int | None = None,
                 base: str | None = None, kill_after_s: float = 600.0):
        """``base`` is the operator's base model (``model.base`` under the user's overrides);
        ``env``, ``trainer_cmd``, ``num_gpus`` and ``kill_after_s`` go to the
        :class:`~studio.jobs.scheduler.Scheduler`."""
        self.ws = workspace
        table.ensure_table(workspace)
        self.base = base
        self.scheduler = Scheduler(workspace, env=env, trainer_cmd=trainer_cmd,
                                   num_gpus=num_gpus, kill_after_s=kill_after_s)

    # ---- queries -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job:
        with self.ws.db() as conn:
            return table.fetch(conn, job_id)

    def list(self, states: Sequence[str] | None = None) -> list[Job]:
        """Jobs, newest first."""
        with self.ws.db() as conn:
            return table.fetch_all(conn, states)

    def job_for_run(self, run_dir: str | Path) -> Job | None:
        with self.ws.db() as conn:
            return table.latest_for_run(conn, run_dir)

    def queue_position(self, job: Job) -> int:
        """1 for the next queued job to start, 2 for the one after, ..."""
        with self.ws.db() as conn:
            return table.queue_position(conn, job)

    # ---- config and submit ---------------------------------------------------------------------
    def build_config(self, dataset: str | Path, preset: str | None = None,
                     overrides: Sequence[str] = ()) -> TrainConfig:
        """The full training config: preset <- the service's base model <- the user's
        overrides <- the dataset folder. Loads the preset once; a :class:`JobError` (one line)
        on a bad dataset, preset or setting."""
        folder = dataset_folder(dataset)
        ovr = [f"model.base={self.base}"] if self.base else []
        ovr += [o for o in overrides if o.strip()]
        try:
            cfg = load_config(preset=preset or None, overrides=ovr)
            cfg.data.dataset = str(folder)
        except (ValueError, OSError) as exc:  # ConfigError is a ValueError: one line naming the key
            raise JobError(first_line(exc)) from exc
        return cfg

    def new_run_name(self, dataset: Path, preset: str | None) -> str:
        """DATASET-PRESET-YYYYmmdd-HHMMSS, with a -2, -3 ... suffix when taken."""
        stem = slugify(f"{dataset.name}-{Path(preset).stem if preset else 'custom'}", "run")[:50]
        base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, i = base, 2
        while (self.ws.runs_dir / name).exists():
            name, i = f"{base}-{i}", i + 1
        return name

    def submit(self, cfg: TrainConfig, *, run_name: str | None = None,
               preset: str | None = None) -> Job:
        """Name the run, write ``RUN/config.yaml`` (once) and queue the job. ``preset`` only
        names the run and is recorded with the job; ``cfg`` already holds its values. The job
        starts when the scheduler next runs (at once if nothing else is training)."""
        from studio.train.preflight import check as memory_preflight

        memory_preflight(cfg)  # a config that cannot fit this GPU is refused in one sentence
        dataset = dataset_folder(cfg.data.dataset)
        try:
            name = safe_name(run_name, "run name") if run_name else \
                self.new_run_name(dataset, preset)
            folder = RunFolder(self.ws.run_path(name))
        except WorkspaceError as exc:
            raise JobError(str(exc)) from exc
        if folder.exists() and any(folder.path.iterdir()):
            raise JobError(f"A run named {name!r} already exists; pick another name.")
        cfg = cfg.model_copy(deep=True)
        cfg.data.dataset = str(dataset)
        cfg.output_dir = str(folder.path)
        config_path = folder.save_config(cfg)
        with table.transaction(self.ws) as conn:
            job_id = table.insert(conn, run_name=name, run_dir=folder.path, dataset=dataset,
                                  preset=preset, config_path=config_path, now=time.time())
        self.ws.register_run(name, folder.path, {"dataset": str(dataset), "preset": preset,
                                                 "job": job_id})
        log.info("queued job %s: run %s (dataset %s, preset %s)", job_id, name, dataset, preset)
        return self.get(job_id)

    # ---- cancel / resume -----------------------------------------------------------------------
    def cancel(self, job_id: int) -> Job:
        """Queued: cancelled at once. Running: SIGTERM to its process group (the trainer saves a
        checkpoint and exits with code 3; the scheduler then marks it cancelled, and kills it
        when it has not stopped ``kill_after_s`` later)."""
        with table.transaction(self.ws) as conn:
            job = table.fetch(conn, job_id)
            if job.state == "queued":
                table.cancel_queued(conn, job.id, time.time())
            elif job.state == "running":
                end = job.folder.end_event(job.events_offset)
                if end is not None:  # the trainer already ended (it is only exiting): no signal
                    done = _ENDED_WORDS.get(end.get("status"), "ended")
                    raise JobError(f"Job {job.id} has already {done}; there is nothing to cancel.")
                table.request_cancel(conn, job.id, time.time())
                signal_group(job.pgid, job.pid, job.proc_start, signal.SIGTERM)
            else:
                raise JobError(f"Job {job.id} is {job.state}; only queued or running jobs can be "
                               "cancelled.")
        log.info("cancel requested for job %s", job_id)
        return self.get(job_id)

    def resume(self, job_id: int) -> Job:
        """Queue a failed or cancelled job again; it continues from its last complete
        checkpoint (``--resume latest``), or starts over when it has none."""
        with table.transaction(self.ws) as conn:
            job = table.fetch(conn, job_id)
            if job.state not in ("failed", "cancelled"):
                raise JobError(f"Job {job.id} is {job.state}; only failed or cancelled jobs can "
                               "be resumed.")
            if not job.folder.is_run():
                raise JobError(f"The run folder of job {job.id} ({job.run_dir}) has no "
                               f"{RunFolder.CONFIG} any more, so it cannot be resumed.")
            table.requeue(conn, job.id, time.time())
        return self.get(job_id)

    # ---- delete ----------------------------------------------------------------------------------
    def delete_run(self, run_dir: str | Path) -> str:
        """Delete a run of this workspace: its jobs, its folder and its registry entry; its name.
        Refused (:class:`JobError`) for a folder outside the workspace's runs and for a run a
        job is training or waiting to train (cancel it first)."""
        text = str(run_dir or "").strip()
        path = Path(text).expanduser()
        try:
            link = self.ws.run_path(path.name)  # runs/NAME, with NAME a safe name
        except WorkspaceError as exc:
            raise JobError(str(exc)) from exc
        if not text or link.is_symlink() or not link.is_dir() or path.resolve() != \
                link.resolve() or link.resolve().parent != self.ws.runs_dir.resolve():
            raise JobError(f"{text!r} is not a run of this workspace.")
        folder = RunFolder(link)
        with table.transaction(self.ws) as conn:  # no scheduler starts it meanwhile
            job = table.latest_for_run(conn, folder.path)
            if job is not None and job.state in ("queued", "running"):
                raise JobError(f"Run {folder.name!r} is {job.state}; cancel it first, then "
                               "delete it.")
            table.delete_for_run(conn, folder.path)
        folder.delete()
        self.ws.unregister_run(folder.name)
        log.info("deleted run %s", folder.path)
        return folder.name

    # ---- the scheduler -------------------------------------------------------------------------
    def reconcile(self) -> list[Job]:
        """Bring the table in line with reality and start the next queued job when no job runs.
        Safe to call from any thread or process at any time; the jobs it changed or started."""
        return [self.get(i) for i in self.scheduler.reconcile()]

    def start_scheduler(self, interval_s: float = 1.0) -> None:
        """Reconcile now, then every ``interval_s`` in a daemon thread (idempotent)."""
        self.scheduler.start(interval_s)

    def stop_scheduler(self) -> None:
        """Stop the daemon thread; running trainings go on (a later start re-adopts them)."""
        self.scheduler.stop()

    def wait(self, job_id: int, states: Sequence[str] = ENDED, timeout: float = 600,
             interval_s: float = 0.2) -> Job:
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


_SERVICES: dict[str, JobService] = {}
_SERVICES_LOCK = threading.Lock()


def get_service(workspace: Workspace, **kwargs: Any) -> JobService:
    """The one :class:`JobService` of a workspace in this process (keyword arguments apply when
    it is first made)."""
    key = str(Path(workspace.home).resolve())
    with _SERVICES_LOCK:
        if key not in _SERVICES:
            _SERVICES[key] = JobService(workspace, **kwargs)
        return _SERVICES[key]
