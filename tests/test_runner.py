"""The job manager with real subprocesses (a contract-following fake trainer: fast and exact)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _train_support import wait_for as _wait_for

from studio.jobs.runner import (
    JobError,
    Runner,
    failure_cause,
    last_meaningful_line,
    proc_start_token,
    process_alive,
)
from studio.runs.monitor import RunMonitor

wait_for = functools.partial(_wait_for, interval=0.05)

FAKE = str(Path(__file__).with_name("runner_fake_trainer.py"))


def cfg(steps: int, sleep: float = 0.05, every: int = 5) -> str:
    return f"steps: {steps}\nsleep: {sleep}\nckpt_every: {every}\n"


@pytest.fixture()
def dataset(tmp_path) -> Path:
    d = tmp_path / "ds"
    (d / "images").mkdir(parents=True)
    return d


@pytest.fixture()
def runner(workspace):
    r = Runner(workspace, trainer_cmd=[sys.executable, FAKE])
    yield r
    for job in r.list(["running"]):  # never leave a training behind
        if job.pgid and process_alive(job.pid, job.proc_start):
            os.killpg(job.pgid, signal.SIGKILL)
    for p in r._procs.values():
        p.kill()
        p.wait()


def steps_of(run_dir) -> list[int]:
    if not (Path(run_dir) / "events.jsonl").exists():
        return []
    evs = [json.loads(x) for x in (Path(run_dir) / "events.jsonl").read_text().splitlines()]
    return [e["step"] for e in evs if e["type"] == "step"]


def test_second_job_waits_in_the_queue_and_starts_after_the_first(runner, dataset):
    a = runner.submit(dataset, run_name="a", config_text=cfg(8))
    b = runner.submit(dataset, run_name="b", config_text=cfg(3))
    assert Path(a.config_path).read_text() == cfg(8)  # the config is in the run before it runs
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
    assert (Path(a.run_dir) / "train.log").read_text().startswith(f"=== job {a.id} started")


def test_two_schedulers_never_start_two_jobs(workspace, dataset):
    r1 = Runner(workspace, trainer_cmd=[sys.executable, FAKE])
    r2 = Runner(workspace, trainer_cmd=[sys.executable, FAKE])
    jobs = [r1.submit(dataset, run_name=f"j{i}", config_text=cfg(40)) for i in range(3)]
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
        assert len(r1._procs) + len(r2._procs) == 1
    finally:
        for r in (r1, r2):
            for p in r._procs.values():
                p.kill()
                p.wait()
    assert {j.id for j in jobs} == {j.id for j in r1.list()}


def test_cancel_saves_a_checkpoint_and_resume_continues_the_steps(runner, dataset):
    job = runner.submit(dataset, run_name="c", config_text=cfg(30, 0.05, 100))
    runner.reconcile()
    wait_for(lambda: len(steps_of(job.run_dir)) >= 4, what="steps")
    runner.cancel(job.id)
    done = runner.wait(job.id, timeout=30)
    assert done.state == "cancelled" and done.exit_code == 3 and done.resumable
    ckpts = sorted((Path(job.run_dir) / "checkpoints").glob("checkpoint-*/COMPLETE"))
    assert ckpts, "cancel must leave a checkpoint"
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


def test_a_run_that_ended_is_finished_even_if_a_late_signal_kills_its_exit(runner, dataset):
    """A cancel clicked while a finished trainer is exiting must not turn it into a cancelled
    (or failed) run: the LoRA is saved and the end event says so."""
    job = runner.submit(dataset, run_name="late",
                        config_text=cfg(3, 0.02, 100) + "exit_sleep: 30\n")
    runner.reconcile()
    wait_for(lambda: '"status": "finished"' in (Path(job.run_dir) / "events.jsonl").read_text()
             if (Path(job.run_dir) / "events.jsonl").exists() else False, what="the end event")
    with pytest.raises(JobError, match="already finished; there is nothing to cancel"):
        runner.cancel(job.id)
    assert runner.get(job.id).state == "running"  # still exiting, not signalled
    os.killpg(runner.get(job.id).pgid, signal.SIGTERM)  # a late signal from elsewhere
    done = runner.wait(job.id, timeout=30)
    assert done.exit_code == -signal.SIGTERM
    assert done.state == "finished" and not done.resumable and done.error is None


def test_cancelling_a_queued_job_never_starts_it(runner, dataset):
    a = runner.submit(dataset, run_name="a", config_text=cfg(4))
    b = runner.submit(dataset, run_name="b", config_text=cfg(4))
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
    job = runner.submit(dataset, run_name="dead", config_text=cfg(400, 0.05, 3))
    runner.reconcile()
    job = runner.get(job.id)
    wait_for(lambda: list((Path(job.run_dir) / "checkpoints").glob("*/COMPLETE")),
             what="a checkpoint")
    os.killpg(job.pgid, signal.SIGKILL)  # the machine "loses" the trainer: no end event
    wait_for(lambda: proc_start_token(job.pid) is None, what="process death")
    fresh = Runner(workspace, trainer_cmd=[sys.executable, FAKE])  # the app starts again
    fresh.reconcile()
    dead = fresh.get(job.id)
    assert dead.state == "failed" and dead.resumable
    assert dead.error and "\n" not in dead.error
    assert (Path(job.run_dir) / "train.log").exists()  # the log is kept
    fresh.resume(job.id)
    fresh.reconcile()
    again = fresh.get(job.id)
    assert again.state == "running" and "--resume latest" in again.command
    os.killpg(again.pgid, signal.SIGKILL)
    fresh._procs[job.id].wait()


def test_a_reused_pid_is_not_mistaken_for_the_training(runner, dataset):
    job = runner.submit(dataset, run_name="reuse", config_text=cfg(3))
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
        "from studio.jobs.runner import Runner\n"
        f"r = Runner(Workspace(sys.argv[1]), trainer_cmd=[sys.executable, {FAKE!r}])\n"
        f"j = r.submit(sys.argv[2], run_name='long', config_text={cfg(40, 0.05, 10)!r})\n"
        "r.start_scheduler(0.2)\n"
        "print(j.id, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(app), str(workspace.home), str(dataset)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    job_id = int(proc.stdout.readline())
    r = Runner(workspace, trainer_cmd=[sys.executable, FAKE])
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
        assert again.state == "running" and again.pid == job.pid and not r._procs
        done = r.wait(job_id, timeout=60)
        assert done.state == "finished" and done.exit_code is None  # known from the end event
        assert steps_of(job.run_dir) == list(range(1, 41))
    finally:
        if process_alive(job.pid, job.proc_start):
            os.killpg(job.pgid, signal.SIGKILL)


def test_a_deleted_dataset_fails_with_a_one_line_cause(runner, dataset):
    job = runner.submit(dataset, run_name="nodata", config_text=cfg(3))
    dataset.rename(dataset.with_name("moved"))
    runner.reconcile()
    failed = runner.wait(job.id, timeout=30)
    assert failed.state == "failed" and failed.exit_code == 2
    assert failed.error == f"The dataset folder {dataset.resolve()} does not exist."
    view = RunMonitor(job.run_dir).poll(failed)
    assert view.status == "failed" and view.error == failed.error
    assert "does not exist" in view.log_tail


def test_failure_cause_without_an_error_event_is_the_last_meaningful_log_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text(
        "=== job 1 started: python -m studio train\n"
        "steps:  10%|#         | 1/10 [00:01<00:09]\r steps:  20%|##        | 2/10 [00:02<00:08]\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    boom()\n"
        "RuntimeError: CUDA error: device-side assert triggered\n\n")
    assert failure_cause(run, 1) == "RuntimeError: CUDA error: device-side assert triggered"
    (run / "events.jsonl").write_text(json.dumps({"type": "error", "message": "Loss is NaN."})
                                      + "\n")
    assert failure_cause(run, 1) == "Loss is NaN."
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "SIGKILL" in failure_cause(empty, -9) and "memory" in failure_cause(empty, -9)
    assert "code 1" in failure_cause(empty, 1)
    assert last_meaningful_line("\n\n") is None


def test_submit_rejects_bad_input_in_one_sentence(runner, dataset, tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        runner.submit(tmp_path / "nope", config_text=cfg(1))
    with pytest.raises(JobError, match="Choose a dataset"):
        runner.submit("", config_text=cfg(1))
    with pytest.raises(JobError, match="Invalid run name"):
        runner.submit(dataset, run_name="../evil", config_text=cfg(1))
    runner.submit(dataset, run_name="dup", config_text=cfg(1))
    with pytest.raises(JobError, match="already exists"):
        runner.submit(dataset, run_name="dup", config_text=cfg(1))
    with pytest.raises(JobError, match="no job 999"):
        runner.get(999)


def test_jobs_cli_lists_cancels_and_resumes(runner, dataset, home, capsys, monkeypatch):
    import studio.jobs.runner as runner_mod
    from studio.cli import main

    monkeypatch.setattr(runner_mod, "DEFAULT_TRAINER_CMD", [sys.executable, FAKE])
    a = runner.submit(dataset, run_name="clirun", config_text=cfg(3))
    b = runner.submit(dataset, run_name="clirun2", config_text=cfg(3))
    assert main(["jobs", "cancel", str(b.id)]) == 0
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "clirun2" in out and "cancelled" in out
    runner.wait(a.id, timeout=30)
    assert main(["jobs", "resume", str(b.id)]) == 0
    assert "resumed (running)" in capsys.readouterr().out
    assert main(["jobs", "resume", "12345"]) == 2
    assert "no job 12345" in capsys.readouterr().err
    done = runner.wait(b.id, timeout=30)  # launched by the CLI "process", finished here
    assert done.state == "finished"
