"""Every run can finish: resuming from the final checkpoint (a copy of a finished run, a run killed
in its end-of-run work, a run whose final export hit a full disk) writes the final LoRA in every
format, the card, the manifest and the end event, without training past the last step or saving
the final checkpoint again. A full disk is one sentence, exit code 2 and an error event."""

from __future__ import annotations

import errno
import shutil

import pytest
from _train_support import fast_overrides, make_dataset, steps_of

from studio.cli import main
from studio.config import load_config
from studio.runs import checkpoints as ckpt
from studio.runs.check import check_run_folder
from studio.runs.events import read_events
from studio.runs.folder import RunFolder
from studio.train import state
from studio.train.loop import train

FINAL = (RunFolder.CARD, RunFolder.MANIFEST, "pytorch_lora_weights.safetensors",
         "lora_kohya.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


def _overrides(run, dataset, tiny_models, steps):
    return fast_overrides(run, dataset, tiny_models["base"], steps=steps) + [
        "checkpoints.every_n_steps=2", "validation.at_end=true"]


def _cfg(run, dataset, tiny_models, steps):
    return load_config(overrides=_overrides(run, dataset, tiny_models, steps))


def _after_last_start(run):
    ev = read_events(run)
    start = max(i for i, e in enumerate(ev) if e["type"] == "start")
    return ev[start], ev[start:]


def test_resuming_a_copy_of_a_finished_run_finishes_it_again(tmp_path, tiny_models, dataset):
    run = tmp_path / "run"
    assert train(_cfg(run, dataset, tiny_models, 4)).status == "finished"
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    marker = copy / "checkpoints" / "checkpoint-000004" / ckpt.MARKER
    before = marker.stat().st_mtime_ns
    for name in FINAL:
        (copy / name).unlink()
    result = train(_cfg(copy, dataset, tiny_models, 4), resume="latest")
    assert result.status == "finished" and result.step == 4
    start, after = _after_last_start(copy)
    assert start["resumed_from"] == "checkpoints/checkpoint-000004"
    assert steps_of(after) == [] and after[-1]["type"] == "end" and after[-1]["status"] == "finished"
    assert marker.stat().st_mtime_ns == before  # the final checkpoint is not written again
    assert all((copy / name).is_file() for name in FINAL)
    assert check_run_folder(copy) == []


def test_final_checkpoint_mid_epoch_does_not_train_past_the_end(tmp_path, tiny_models, dataset):
    """3 steps with 2 steps per epoch: the final checkpoint is mid-epoch."""
    run = tmp_path / "run"
    cfg = _cfg(run, dataset, tiny_models, 3)
    assert train(cfg).status == "finished"
    assert [e["epoch"] for e in read_events(run) if e["type"] == "step"] == [0, 0, 1]
    for name in FINAL:
        (run / name).unlink()
    result = train(cfg, resume="latest")
    assert result.step == 3 and steps_of(_after_last_start(run)[1]) == []
    assert check_run_folder(run) == []


def _fail_when(monkeypatch, pred, make_error):
    real = state.save_lora

    def save_lora(folder, modules):
        if pred(folder):
            raise make_error()
        return real(folder, modules)

    monkeypatch.setattr(state, "save_lora", save_lora)


def test_disk_full_in_the_final_export_then_resume(tmp_path, tiny_models, dataset, monkeypatch,
                                                   capsys):
    run = tmp_path / "run"
    _fail_when(monkeypatch, lambda folder: folder == run,
               lambda: OSError(errno.ENOSPC, "No space left on device"))
    rc = main(["train", "--no-progress", "--set", *_overrides(run, dataset, tiny_models, 4)])
    err = capsys.readouterr().err
    msg = (f"The disk holding {run} is full while writing the final LoRA; checkpoints 2 and 4 "
           "are intact; free space and resume with --resume latest.")
    assert rc == 2 and f"error: {msg}\n" in err and "Traceback" not in err
    ev = read_events(run)
    assert ev[-2] == {**ev[-2], "type": "error", "message": msg}
    assert ev[-1]["type"] == "end" and ev[-1]["status"] == "failed"
    assert not (run / RunFolder.MANIFEST).exists()

    monkeypatch.undo()
    rc = main(["train", "--no-progress", "--resume", "latest", "--set",
               *_overrides(run, dataset, tiny_models, 4)])
    assert rc == 0
    assert all((run / name).is_file() for name in FINAL)
    assert check_run_folder(run) == []


def test_disk_full_in_a_checkpoint_is_one_sentence(tmp_path, tiny_models, dataset, monkeypatch,
                                                   capsys):
    from safetensors import SafetensorError

    run = tmp_path / "run"
    _fail_when(monkeypatch, lambda folder: folder.name.startswith(".tmp-checkpoint-000004"),
               lambda: SafetensorError("Error while serializing: No space left on device "
                                       "(os error 28)"))
    rc = main(["train", "--no-progress", "--set", *_overrides(run, dataset, tiny_models, 6)])
    err = capsys.readouterr().err
    msg = (f"The disk holding {run} is full while writing checkpoint 4; checkpoint 2 is intact; "
           "free space and resume with --resume latest.")
    assert rc == 2 and f"error: {msg}\n" in err
    assert read_events(run)[-2]["message"] == msg
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [2]
    assert not list((run / "checkpoints").glob(".tmp-*"))
