"""The job scheduler with real subprocesses (a contract-following fake trainer: fast and exact)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _train_support import wait_for as _wait_for

from studio.jobs.process import proc_start_token, process_alive
from studio.jobs.scheduler import failure_cause, last_meaningful_line
from studio.jobs.service import JobService
from studio.jobs.table import JobError
from studio.runs.folder import RunFolder
from studio.runs.monitor import RunMonitor

wait_for = functools.partial(_wait_for, interval=0.05)

FAKE = str(Path(__file__).with_name("runner_fake_trainer.py"))


def fake_service(workspace, *fake_args: str) -> JobService:
    """A job service whose trainer is the fake one (``--step-sleep``/``--exit-sleep`` args)."""
    return JobService(workspace, trainer_cmd=[sys.executable, FAKE, *fake_args])


def cfg(svc: JobService, dataset: Path, steps: int, every: int = 5):
    """A full TrainConfig through the service: the fake reads its steps and checkpoint interval."""
    return svc.build_config(dataset, overrides=[f"train.max_train_steps={steps}",
                                                 f"checkpoints.every_n_steps={every}"])


def stop_all(*services: JobService) -> None:
    """Never leave a training behind."""
    for svc in services:
        for job in svc.list(["running"]):
            if job.pgid and process_alive(job.pid, job.proc_start):
                os.killpg(job.pgid, signal.SIGKILL)
        for p in svc.scheduler.procs.values():
            p.kill()
            p.wait()


@pytest.fixture()
def dataset(tmp_path) -> Path:
    d = tmp_path / "ds"
    (d / "images").mkdir(parents=True)
    return d


@pytest.fixture()
def runner(workspace):
    svc = fake_service(workspace)
    yield svc
    svc.stop_scheduler()
    stop_all(svc)


def steps_of(run_dir) -> list[int]:
    return [e["step"] for e in RunFolder(run_dir).events() if e["type"] == "step"]


def test_second_job_waits_in_the_queue_and_starts_after_the_first(runner, dataset):
    a = runner.submit(cfg(runner, dataset, 8), run_name="a")
    b = runner.submit(cfg(runner, dataset, 3), run_name="b")
    saved = a.folder.config()  # the config is in the run before it runs
    assert saved.train.max_train_steps == 8 and saved.output_dir == a.run_dir
    assert saved.data.dataset == str(dataset.resolve()) == a.dataset
    runner.reconcile()
    assert runner.get(a.id).state == "running"
    assert runner.get(b.id).state == "queued"
    assert runner.queue_position(runner.get(b.id)) == 1
    a_done = runner.wait(a.id, timeout=60)
    assert a_done.state == "finished" and a_done.exit_code == 0
    b_done = runner.wait(b.id, timeout=60)
    assert b_done.state == "finished"
    assert b_done.started >= a_done.ended
    assert steps_of(a.run_dir) == list(range(1, 9))
    assert a.folder.log_path.read_text().startswith(f"=== job {a.id} started")
    assert runner.job_for_run(a.run_dir).id == a.id and runner.job_for_run(dataset) is None


def test_two_schedulers_never_start_two_jobs(workspace, dataset):
    r1, r2 = fake_service(workspace), fake_service(workspace)
    jobs = [r1.submit(cfg(r1, dataset, 40), run_name=f"j{i}") for i in range(3)]
    barrier = threading.Barrier(2)

    def hammer(r):
        barrier.wait()
        for _ in range(20):
            r.reconcile()

    ts = [threading.Thread(target=hammer, args=(r,)) for r in (r1, r2)]
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert [j.state for j in r1.list(["running"])] == ["running"]
        assert len(r1.scheduler.procs) + len(r2.scheduler.procs) == 1
    finally:
        stop_all(r1, r2)
    assert {j.id for j in jobs} == {j.id for j in r1.list()}


def test_cancel_saves_a_checkpoint_and_resume_continues_the_steps(runner, dataset):
    job = runner.submit(cfg(runner, dataset, 30, 100), run_name="c")
    runner.reconcile()
    wait_for(lambda: len(steps_of(job.run_dir)) >= 4, what="steps")
    runner.cancel(job.id)
    done = runner.wait(job.id, timeout=30)
    assert done.state == "cancelled" and done.exit_code == 3 and done.resumable
    assert job.folder.checkpoints(), "cancel must leave a checkpoint"
    stopped_at = steps_of(job.run_dir)[-1]
    assert RunMonitor(job.run_dir).poll(done).status == "cancelled"

    runner.resume(job.id)
    runner.reconcile()
    assert "--resume latest" in runner.get(job.id).command
    final = runner.wait(job.id, timeout=60)
    assert final.state == "finished"
    steps = steps_of(job.run_dir)
    assert steps[: stopped_at] == list(range(1, stopped_at + 1))
    assert steps[stopped_at:] == list(range(stopped_at + 1, 31))  # no gap, no restart at 0
    view = RunMonitor(job.run_dir).poll(final)
    assert [p.step for p in view.loss] == list(range(1, 31))


def test_a_run_that_ended_is_finished_even_if_a_late_signal_kills_its_exit(workspace, dataset):
    """A cancel clicked while a finished trainer is exiting must not turn it into a cancelled
    (or failed) run: the LoRA is saved and the end event says so."""
    runner = fake_service(workspace, "--step-sleep", "0.02", "--exit-sleep", "30")
    try:
        job = runner.submit(cfg(runner, dataset, 3, 100), run_name="late")
        runner.reconcile()
        wait_for(lambda: job.folder.outcome(), what="the end event")
        assert job.folder.outcome() == "finished"
        with pytest.raises(JobError, match="already finished; there is nothing to cancel"):
            runner.cancel(job.id)
        assert runner.get(job.id).state == "running"  # still exiting, not signalled
        os.killpg(runner.get(job.id).pgid, signal.SIGTERM)  # a late signal from elsewhere
        done = runner.wait(job.id, timeout=30)
        assert done.exit_code == -signal.SIGTERM
        assert done.state == "finished" and not done.resumable and done.error is None
    finally:
        stop_all(runner)


def test_cancelling_a_queued_job_never_starts_it(runner, dataset):
    a = runner.submit(cfg(runner, dataset, 4), run_name="a")
    b = runner.submit(cfg(runner, dataset, 4), run_name="b")
    runner.reconcile()
    assert runner.cancel(b.id).state == "cancelled"
    runner.wait(a.id, timeout=30)
    runner.reconcile()
    assert runner.get(b.id).state == "cancelled" and runner.get(b.id).pid is None
    with pytest.raises(JobError, match="only queued or running"):
        runner.cancel(a.id)
    with pytest.raises(JobError, match="only failed or cancelled"):
        runner.resume(a.id)


def test_a_dead_process_becomes_failed_but_resumable(runner, workspace, dataset):
    job = runner.submit(cfg(runner, dataset, 400, 3), run_name="dead")
    runner.reconcile()
    job = runner.get(job.id)
    wait_for(lambda: job.folder.checkpoints(), what="a checkpoint")
    os.killpg(job.pgid, signal.SIGKILL)  # the machine "loses" the trainer: no end event
    wait_for(lambda: proc_start_token(job.pid) is None, what="process death")
    fresh = fake_service(workspace)  # the app starts again
    try:
        fresh.reconcile()
        dead = fresh.get(job.id)
        assert dead.state == "failed" and dead.resumable
        assert dead.error and "\n" not in dead.error
        assert job.folder.log_path.exists()  # the log is kept
        fresh.resume(job.id)
        fresh.reconcile()
        again = fresh.get(job.id)
        assert again.state == "running" and "--resume latest" in again.command
    finally:
        stop_all(fresh)


def test_a_reused_pid_is_not_mistaken_for_the_training(runner, dataset):
    job = runner.submit(cfg(runner, dataset, 3), run_name="reuse")
    with runner.ws.db() as conn:  # a running row whose pid now belongs to another process
        conn.execute("UPDATE jobs SET state='running', pid=?, pgid=?, proc_start=? WHERE id=?",
                     (os.getpid(), os.getpid(), "1", job.id))
    assert not process_alive(os.getpid(), "1")
    assert process_alive(os.getpid(), proc_start_token(os.getpid()))
    runner.reconcile()
    j = runner.get(job.id)
    assert j.state == "failed" and j.resumable


def test_training_survives_the_app_being_killed_and_is_readopted(workspace, dataset, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "import sys, time\n"
        "from studio.workspace import Workspace\n"
        "from studio.jobs.service import get_service\n"
        f"s = get_service(Workspace(sys.argv[1]), trainer_cmd=[sys.executable, {FAKE!r}])\n"
        "c = s.build_config(sys.argv[2], overrides=['train.max_train_steps=40',\n"
        "                                           'checkpoints.every_n_steps=10'])\n"
        "j = s.submit(c, run_name='long')\n"
        "s.start_scheduler(0.2)\n"
        "print(j.id, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(app), str(workspace.home), str(dataset)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    job_id = int(proc.stdout.readline())
    r = fake_service(workspace)
    job = wait_for(lambda: r.get(job_id) if r.get(job_id).state == "running" else None,
                   what="running")
    proc.kill()  # the app dies (SIGKILL: no cleanup at all)
    proc.wait()
    try:
        assert process_alive(job.pid, job.proc_start), "the training must outlive the app"
        n = len(steps_of(job.run_dir))
        wait_for(lambda: len(steps_of(job.run_dir)) > n + 3, what="progress after the app died")
        r.reconcile()  # the next app start: re-adopts, does not start another
        again = r.get(job_id)
        assert again.state == "running" and again.pid == job.pid and not r.scheduler.procs
        done = r.wait(job_id, timeout=60)
        assert done.state == "finished" and done.exit_code is None  # known from the end event
        assert steps_of(job.run_dir) == list(range(1, 41))
    finally:
        if process_alive(job.pid, job.proc_start):
            os.killpg(job.pgid, signal.SIGKILL)


def test_a_deleted_dataset_fails_with_a_one_line_cause(runner, dataset):
    job = runner.submit(cfg(runner, dataset, 3), run_name="nodata")
    dataset.rename(dataset.with_name("moved"))
    runner.reconcile()
    failed = runner.wait(job.id, timeout=30)
    assert failed.state == "failed" and failed.exit_code == 2
    assert failed.error == f"The dataset folder {dataset.resolve()} does not exist."
    view = RunMonitor(job.run_dir).poll(failed)
    assert view.status == "failed" and view.error == failed.error
    assert "does not exist" in view.log_tail


def test_a_trainer_that_cannot_start_fails_resumable(workspace, dataset, tmp_path):
    svc = JobService(workspace, trainer_cmd=[str(tmp_path / "no-such-trainer")])
    job = svc.submit(cfg(svc, dataset, 3), run_name="nostart")
    assert [j.id for j in svc.reconcile()] == [job.id]
    failed = svc.get(job.id)
    assert failed.state == "failed" and failed.resumable
    assert failed.error.startswith("The training could not be started: ")
    assert "no-such-trainer" in failed.command


def test_failure_cause_without_an_error_event_is_the_last_meaningful_log_line(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.log_path.write_text(
        "=== job 1 started: python -m studio train\n"
        "steps:  10%|#         | 1/10 [00:01<00:09]\r steps:  20%|##        | 2/10 [00:02<00:08]\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    boom()\n"
        "RuntimeError: CUDA error: device-side assert triggered\n\n")
    assert failure_cause(run.path, 1) == "RuntimeError: CUDA error: device-side assert triggered"
    run.event_writer().error("Loss is NaN.")
    assert failure_cause(run.path, 1) == "Loss is NaN."
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "SIGKILL" in failure_cause(empty, -9) and "memory" in failure_cause(empty, -9)
    assert "code 1" in failure_cause(empty, 1)
    assert "deleted" in failure_cause(tmp_path / "gone", 1)
    assert last_meaningful_line("\n\n") is None
