"""The job service without a UI: configs, submit, the scheduler thread, the `jobs` CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _train_support import wait_for
from test_runner import FAKE, cfg, fake_service, stop_all

import studio.config as config_mod
import studio.fsutil as fsutil
from studio.jobs.service import JobService, get_service
from studio.jobs.table import JobError
from studio.runs.folder import RunFolder


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


def test_one_start_loads_the_preset_once_and_writes_the_config_once(workspace, dataset,
                                                                    monkeypatch):
    preset_loads: list[str] = []
    config_writes: list[Path] = []
    real_preset_path, real_write = config_mod.preset_path, fsutil.atomic_write_text

    def counting_preset_path(name):
        preset_loads.append(name)
        return real_preset_path(name)

    def counting_write(path, text):
        if Path(path).name == RunFolder.CONFIG:
            config_writes.append(Path(path))
        return real_write(path, text)

    monkeypatch.setattr(config_mod, "preset_path", counting_preset_path)
    monkeypatch.setattr(fsutil, "atomic_write_text", counting_write)
    svc = JobService(workspace, base="/models/operator-base")
    built = svc.build_config(dataset, preset="portrait", overrides=["lora.rank=8", " "])
    job = svc.submit(built, preset="portrait")
    assert preset_loads == ["portrait"], "one Start must load the preset once"
    assert config_writes == [RunFolder(job.run_dir).config_path], "config.yaml written once"

    saved = job.folder.config()
    assert saved.lora.rank == 8 and saved.lora.alpha == 16  # the override over the preset
    assert saved.model.base == "/models/operator-base"  # the service's base under the overrides
    assert saved.data.dataset == str(dataset.resolve()) and saved.output_dir == job.run_dir
    assert built.output_dir is None  # submit does not change the caller's config
    assert job.run_name.startswith("ds-portrait-") and job.preset == "portrait"
    assert job.state == "queued" and job.config_path == str(job.folder.config_path)
    assert [r["name"] for r in workspace.list_runs()] == [job.run_name]
    # The trainer saves the config it was started with: the same text is not written again.
    job.folder.save_config(job.folder.config())
    assert len(config_writes) == 1, "the trainer must not write an unchanged config.yaml again"


def test_overrides_win_over_the_base_and_the_dataset_wins_over_overrides(workspace, dataset,
                                                                        tmp_path):
    svc = JobService(workspace, base="operator/base")
    built = svc.build_config(dataset, overrides=["model.base=user/base",
                                                 f"data.dataset={tmp_path}"])
    assert built.model.base == "user/base" and built.data.dataset == str(dataset.resolve())
    assert JobService(workspace).build_config(dataset).model.base is None


def test_bad_input_is_one_sentence(runner, dataset, tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        runner.build_config(tmp_path / "nope")
    with pytest.raises(JobError, match="Choose a dataset"):
        runner.build_config("")
    with pytest.raises(JobError, match=r"^train.learnin_rate: unknown setting$"):
        runner.build_config(dataset, overrides=["train.learnin_rate=1"])
    with pytest.raises(JobError, match="Unknown preset 'nope'"):
        runner.build_config(dataset, preset="nope")
    good = cfg(runner, dataset, 1)
    with pytest.raises(JobError, match="Invalid run name"):
        runner.submit(good, run_name="../evil")
    no_data = good.model_copy(deep=True)
    no_data.data.dataset = None
    with pytest.raises(JobError, match="Choose a dataset"):
        runner.submit(no_data)
    runner.submit(good, run_name="dup")
    with pytest.raises(JobError, match="already exists"):
        runner.submit(good, run_name="dup")
    with pytest.raises(JobError, match="no job 999"):
        runner.get(999)
    assert [j.run_name for j in runner.list()] == ["dup"]


def test_resume_refuses_a_run_whose_config_was_deleted(runner, dataset):
    job = runner.submit(cfg(runner, dataset, 2), run_name="gone")
    runner.cancel(job.id)
    job.folder.config_path.unlink()
    with pytest.raises(JobError, match="has no config.yaml any more"):
        runner.resume(job.id)


def test_the_scheduler_runs_without_a_ui_and_stops(workspace, dataset):
    svc = get_service(workspace, trainer_cmd=[sys.executable, FAKE])
    assert get_service(workspace) is svc  # one per workspace in a process
    try:
        svc.start_scheduler(0.05)
        svc.start_scheduler(0.05)  # idempotent: still one thread
        assert svc.scheduler.running
        job = svc.submit(cfg(svc, dataset, 3), run_name="bg")
        done = wait_for(lambda: (j := svc.get(job.id)).state == "finished" and j, timeout=30,
                        interval=0.05, what="the scheduler thread to run the job")
        assert done.exit_code == 0
        svc.stop_scheduler()
        assert not svc.scheduler.running
        svc.stop_scheduler()  # a second stop is harmless
        queued = svc.submit(cfg(svc, dataset, 3), run_name="after")
        assert svc.get(queued.id).state == "queued"  # nothing starts it any more
    finally:
        svc.stop_scheduler()
        stop_all(svc)


def test_jobs_cli_lists_cancels_and_resumes(runner, dataset, home, capsys, monkeypatch):
    import studio.jobs.cli as cli_mod
    from studio.cli import main

    # The CLI is another "process": its own service, with the fake trainer.
    monkeypatch.setattr(cli_mod, "get_service", lambda ws: fake_service(ws))
    a = runner.submit(cfg(runner, dataset, 3), run_name="clirun")
    b = runner.submit(cfg(runner, dataset, 3), run_name="clirun2")
    assert main(["jobs", "cancel", str(b.id)]) == 0
    assert main(["jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "clirun2" in out and "cancelled" in out
    runner.wait(a.id, timeout=30)
    assert main(["jobs", "list", "--json"]) == 0
    assert '"run_name": "clirun"' in capsys.readouterr().out
    assert main(["jobs", "resume", str(b.id)]) == 0
    assert "resumed (running)" in capsys.readouterr().out
    assert main(["jobs", "resume", "12345"]) == 2
    assert "no job 12345" in capsys.readouterr().err
    done = runner.wait(b.id, timeout=30)  # launched by the CLI "process", finished here
    assert done.state == "finished"
