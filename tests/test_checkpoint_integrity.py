"""Checkpoint integrity: the COMPLETE marker records sizes and sha256, ``--resume latest`` skips a
damaged checkpoint with one line naming the file, a damaged checkpoint named explicitly is
refused, and a full disk while writing is one sentence naming the intact checkpoints."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from studio.runs import checkpoints as ckpt
from studio.runs.checkpoints import CheckpointError, resolve_resume, save_checkpoint

LORA = "pytorch_lora_weights.safetensors"


def _write(step: int):
    def write(tmp):
        save_file({"unet.a.lora_A.weight": torch.full((4, 8), float(step))}, str(tmp / LORA))
        torch.save({"step": step, "optimizer": {"x": torch.randn(64)}}, tmp / ckpt.STATE_FILE)
    return write


@pytest.fixture()
def run(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, _write(step))
    return tmp_path


def _ck(run, step):
    return run / "checkpoints" / ckpt.checkpoint_name(step)


def test_marker_records_sizes_and_hashes(run):
    files = ckpt.read_marker(_ck(run, 30))
    assert set(files) == {LORA, ckpt.STATE_FILE}
    for name, entry in files.items():
        f = _ck(run, 30) / name
        assert entry == {"bytes": f.stat().st_size, "sha256": ckpt.sha256_file(f)}
    assert (_ck(run, 30) / ckpt.MARKER).read_text().startswith("step 30\n")
    assert resolve_resume(run, "latest") == _ck(run, 30)


def _truncate(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _random(f):
    f.write_bytes(os.urandom(f.stat().st_size))


@pytest.mark.parametrize("name,damage", [
    (ckpt.STATE_FILE, _truncate), (ckpt.STATE_FILE, lambda f: f.write_bytes(b"")),
    (LORA, _truncate), (LORA, _random)])
def test_latest_falls_back_past_a_damaged_checkpoint(run, name, damage):
    damage(_ck(run, 30) / name)
    lines: list[str] = []
    assert resolve_resume(run, "latest", lines.append) == _ck(run, 20)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"checkpoint-000030/{name}" in lines[0] and "checkpoint-000020" in lines[0]
    with pytest.raises(CheckpointError) as e:
        resolve_resume(run, str(_ck(run, 30)))
    assert f"checkpoint-000030/{name}" in str(e.value) and "\n" not in str(e.value)


def test_every_checkpoint_damaged_is_one_sentence(run):
    for step in (10, 20, 30):
        (_ck(run, step) / ckpt.STATE_FILE).write_bytes(b"")
    lines: list[str] = []
    with pytest.raises(CheckpointError, match="no checkpoint of .* is intact"):
        resolve_resume(run, "latest", lines.append)
    assert len(lines) == 3


@pytest.mark.parametrize("name,damage", [(ckpt.STATE_FILE, _truncate), (LORA, _random)])
def test_old_marker_without_hashes_is_checked_by_loading(run, name, damage):
    for step in (20, 30):
        (_ck(run, step) / ckpt.MARKER).write_text(f"step {step}\n")
    assert ckpt.read_marker(_ck(run, 30)) is None
    assert ckpt.validate_checkpoint(_ck(run, 30)) is None
    damage(_ck(run, 30) / name)
    problem = ckpt.validate_checkpoint(_ck(run, 30))
    assert problem.startswith(f"checkpoint-000030/{name} does not load (")
    assert resolve_resume(run, "latest", lambda m: None) == _ck(run, 20)


def test_same_size_different_bytes_is_caught_by_the_hash(run):
    f = _ck(run, 30) / ckpt.STATE_FILE
    data = bytearray(f.read_bytes())
    data[-30] ^= 0xFF  # inside the zip's trailing records: may still load
    f.write_bytes(bytes(data))
    assert "does not match its recorded sha256" in ckpt.validate_checkpoint(_ck(run, 30))


@pytest.mark.parametrize("make_error", [
    lambda: OSError(errno.ENOSPC, "No space left on device"),
    lambda: __import__("safetensors").SafetensorError(
        "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
        "\"No space left on device\" })  No space left on device (os error 28)"),
])
def test_disk_full_mid_write_names_the_intact_checkpoints(run, make_error):
    def write(tmp):
        _write(40)(tmp)
        raise make_error()

    with pytest.raises(CheckpointError) as e:
        save_checkpoint(run, 40, write)
    msg = str(e.value)
    assert msg == (f"The disk holding {run} is full while writing checkpoint 40; checkpoints 10, "
                   "20 and 30 are intact; free space and resume with --resume latest.")
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [10, 20, 30]


def test_other_write_errors_stay_what_they_are(run):
    def write(tmp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        save_checkpoint(run, 40, write)


def test_free_space_precheck_names_the_setting(run):
    with pytest.raises(CheckpointError, match="checkpoints.min_free_mb"):
        save_checkpoint(run, 40, _write(40), need_bytes=2**62)


def test_marker_is_json_after_the_step_line(run):
    lines = (_ck(run, 10) / ckpt.MARKER).read_text().splitlines()
    assert lines[0] == "step 10" and set(json.loads(lines[1])) == {"files"}
