"""Kill -TERM / kill -9 during `python -m studio train`, then `--resume latest`; multi-process."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from _train_support import ROOT, env, make_dataset, steps_of, studio_train, wait_for
from safetensors.torch import load_file

from studio.runs.checkpoints import list_checkpoints
from studio.runs.events import read_events


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)


def _args(run, dataset, base, steps, every):
    return ["--dataset", str(dataset), "--out", str(run), "--base", str(base), "--preset", "portrait",
            "--set", "data.resolution=64", "--set", f"train.max_train_steps={steps}",
            "--set", "lora.rank=4", "--set", f"checkpoints.every_n_steps={every}",
            "--set", "validation.every_n_steps=null", "--set", "validation.at_end=false"]


def test_sigterm_then_resume_continues(tmp_path, tiny_models, dataset):
    run = tmp_path / "run"
    N = 16  # enough steps that the signal lands mid-run on a fast, quiet machine
    proc = studio_train(*_args(run, dataset, tiny_models["base"], N, 100))
    wait_for(lambda: len(steps_of(read_events(run))) >= 2, 240, proc, "two steps")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-2000:]
    ev = read_events(run)
    stopped = ev[-1]
    assert stopped["type"] == "end" and stopped["status"] == "cancelled"
    k = stopped["step"]
    assert 2 <= k < N
    assert [s for s, _ in list_checkpoints(run)] == [k]
    assert any(e["type"] == "checkpoint" and e["step"] == k for e in ev)

    proc = studio_train(*_args(run, dataset, tiny_models["base"], N, 100), "--resume", "latest")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    ev = read_events(run)
    starts = [e for e in ev if e["type"] == "start"]
    assert starts[1]["step"] == k and starts[1]["resumed_from"] == f"checkpoints/checkpoint-{k:06d}"
    assert steps_of(ev) == list(range(1, N + 1))  # no gap, no restart at 0, no duplicate
    assert ev[-1]["status"] == "finished" and ev[-1]["step"] == N
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    assert (run / "lora_kohya.safetensors").is_file()


def test_kill9_mid_save_leaves_a_resumable_run(tmp_path, tiny_models, dataset):
    run = tmp_path / "run"
    proc = studio_train(*_args(run, dataset, tiny_models["base"], 6, 2),
                        extra_env={"STUDIO_TEST_CHECKPOINT_DELAY": "4"})
    ck = run / "checkpoints"
    wait_for(lambda: (ck / "checkpoint-000002" / "COMPLETE").exists()
             and any(p.name.startswith(".tmp-checkpoint-000004") and
                     (p / "pytorch_lora_weights.safetensors").exists() for p in ck.iterdir()),
             300, proc, "the second save in progress")
    proc.kill()
    proc.wait(30)
    assert [s for s, _ in list_checkpoints(run)] == [2]  # the half-written one is not a checkpoint
    assert list(ck.glob(".tmp-*"))

    from studio.config import load_config
    from studio.train.loop import train

    # resume as a run saved before config versions would: its config.yaml has no config_version
    cfg_file = run / "config.yaml"
    text = cfg_file.read_text()
    assert text.startswith("config_version: 1\n")
    cfg_file.write_text(text.removeprefix("config_version: 1\n"))
    cfg = load_config(config_path=cfg_file)
    result = train(cfg, resume="latest")
    assert cfg_file.read_text() == text  # saved again, at the current version
    assert result.status == "finished" and result.step == 6
    assert not list(ck.glob(".tmp-*"))
    ev = read_events(run)
    start = [e for e in ev if e["type"] == "start"][-1]
    assert start["resumed_from"] == "checkpoints/checkpoint-000002"
    after = [e["step"] for e in ev[ev.index(start):] if e["type"] == "step"]
    assert after == [3, 4, 5, 6]
    assert len(result.loss_history) == 6  # the loss curve continues from the checkpoint
    assert (run / "pytorch_lora_weights.safetensors").is_file()


def test_two_processes_same_entry_point(tmp_path, tiny_models, dataset):
    """Two CPU processes (gloo) through torchrun, the launcher `accelerate launch --multi_gpu` uses,
    training the text encoders too: CLIP-L's last layer gets no gradient (the penultimate hidden
    state conditions the UNet), which DDP only accepts with find_unused_parameters.

    `accelerate launch --cpu --num_processes 2` itself needs mpirun (Intel MPI / OpenMPI) for
    multi-CPU runs, which this machine does not have; torchrun gives the same environment
    (RANK/WORLD_SIZE/MASTER_ADDR) and the trainer's Accelerator picks it up.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline
    from lora_utils import assert_every_lora_tensor_loaded

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "studio", "train", "--no-progress",
           *_args(run, dataset, tiny_models["base"], 2, 100),
           "--set", "lora.train_text_encoder=true"]
    r = subprocess.run(cmd, cwd=ROOT, env=env(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true"),
                       capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = read_events(run)
    assert len([e for e in ev if e["type"] == "start"]) == 1  # only the main process writes events
    assert steps_of(ev) == [1, 2]
    assert ev[-1]["status"] == "finished"
    assert "num_processes=2" in " ".join(e.get("message", "") for e in ev)
    lora = run / "pytorch_lora_weights.safetensors"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models["base"], torch_dtype=torch.float32)
    pipe.load_lora_weights(str(run), weight_name=lora.name, adapter_name="d")
    loaded = assert_every_lora_tensor_loaded(pipe, lora, "d")
    assert loaded == len(load_file(str(lora)))
    assert {k.partition(".")[0] for k in load_file(str(lora))} == {
        "unet", "text_encoder", "text_encoder_2"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
