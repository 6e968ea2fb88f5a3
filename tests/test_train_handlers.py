"""Train-tab handlers without a browser: Start builds the config once and hands that config to
the job service; errors become one line; the hand-off to Generate asks the run folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from studio import config as cfgmod
from studio.config import ConfigError, TrainConfig
from studio.ui.config_widgets import config_fields, preset_values, widget_kind, widget_value
from studio.ui.context import AppContext
from studio.ui.train_handlers import TrainHandlers


class RecordingService:
    """The part of the job service Start uses, recording its calls (no process is started)."""

    def __init__(self, state: str = "running"):
        self.state = state
        self.built: list[tuple] = []
        self.submitted: list[tuple] = []
        self.job = None

    def build_config(self, dataset, preset=None, overrides=()):
        self.built.append((dataset, preset, list(overrides)))
        if not dataset:
            raise ConfigError("Choose a dataset (from the Dataset step or a folder path).")
        return cfgmod.load_config(preset=preset, overrides=[*overrides, f"data.dataset={dataset}"])

    def submit(self, cfg, *, run_name=None, preset=None):
        self.submitted.append((cfg, run_name, preset))
        self.job = SimpleNamespace(id=1, state="queued", run_name=run_name,
                                   run_dir=f"/runs/{run_name}", error=None)
        return self.job

    def reconcile(self):
        self.job.state = self.state
        return [self.job]

    def get(self, job_id):
        return self.job

    def list(self, states=None):
        return [self.job] if self.job and (not states or self.job.state in states) else []

    def queue_position(self, job):
        return 2


def _widgets():
    keys = [(k, widget_kind(fi.annotation)[0]) for _, items in config_fields(TrainConfig)
            for k, fi in items]
    pv = preset_values("portrait")
    return keys, pv, [widget_value(kind, pv.get(k)) for k, kind in keys]


def test_start_builds_the_config_once_and_submits_that_config(workspace, monkeypatch, tmp_path):
    keys, pv, values = _widgets()
    values[[k for k, _ in keys].index("train.learning_rate")] = 3e-4
    svc = RecordingService()
    handlers = TrainHandlers(AppContext(workspace=workspace, jobs=svc), keys)
    loads = []
    real = cfgmod.load_config
    monkeypatch.setattr(cfgmod, "load_config", lambda *a, **k: loads.append(k) or real(*a, **k))

    msg, runs, estimate = handlers.on_start(None, str(tmp_path), "portrait", " me-1 ",
                                            "train.max_train_steps=7", pv, *values)
    assert msg == "✅ Run **me-1** started."
    assert len(loads) == 1  # the service's build_config; the tab loads no preset itself
    assert svc.built == [(str(tmp_path), "portrait",
                          ["train.learning_rate=0.0003", "train.max_train_steps=7"])]
    [(cfg, run_name, preset)] = svc.submitted
    assert (run_name, preset) == ("me-1", "portrait")
    assert cfg.train.learning_rate == 3e-4 and cfg.train.max_train_steps == 7
    assert runs["value"] == "/runs/me-1"
    assert estimate.startswith("**7 steps**")


def test_start_reports_queue_position_and_errors_in_one_line(workspace, tmp_path):
    keys, pv, values = _widgets()
    svc = RecordingService(state="queued")
    handlers = TrainHandlers(AppContext(workspace=workspace, jobs=svc), keys)
    msg, *_ = handlers.on_start(None, str(tmp_path), "portrait", "", "", pv, *values)
    assert msg.endswith("queued (position 2).")

    msg, runs, estimate = handlers.on_start(None, "", "portrait", "", "", pv, *values)
    assert msg == "⚠️ Choose a dataset (from the Dataset step or a folder path)."
    assert len(svc.submitted) == 1

    msg, *_ = handlers.on_start(None, str(tmp_path), "portrait", "", "train.nope=1", pv,
                                *values)
    assert msg.startswith("⚠️ train.nope") and "\n" not in msg


def test_start_beyond_localhost_only_takes_workspace_datasets(workspace):
    keys, pv, values = _widgets()
    svc = RecordingService()
    ctx = AppContext(workspace=workspace, jobs=svc, remote=True)
    TrainHandlers(ctx, keys).on_start(None, "/etc/../home/someone/me", "portrait", "", "", pv,
                                      *values)
    assert svc.built[0][0] == str(workspace.datasets_dir / "me")


def test_start_when_training_is_unavailable(workspace):
    keys, pv, values = _widgets()
    svc = RecordingService()
    handlers = TrainHandlers(AppContext(workspace=workspace, jobs=svc), keys, False, "No GPU.")
    msg, *_ = handlers.on_start("x", "", "portrait", "", "", pv, *values)
    assert msg == "**Training is not available here.** No GPU." and not svc.built


def _run(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints" / "checkpoint-000004"
    ck.mkdir(parents=True)
    (ck / "pytorch_lora_weights.safetensors").write_bytes(b"4")
    (ck / "COMPLETE").write_text("")
    (run / "manifest.json").write_text(json.dumps({"trigger": "zkx", "class_word": "dog"}))
    return run


def test_send_to_generate_asks_the_run_folder(workspace, tmp_path):
    handlers = TrainHandlers(AppContext(workspace=workspace, jobs=RecordingService()), [])
    run = _run(tmp_path)
    *_, msg = handlers.send_final(str(run))
    assert msg == "⚠️ There is no final LoRA (the run has not finished)."
    prompt, lora, _, msg = handlers.to_generate(str(run), "4")
    assert prompt == "a photo of zkx dog"
    assert lora["value"] == str(run.resolve() / "checkpoints" / "checkpoint-000004" /
                                "pytorch_lora_weights.safetensors")
    *_, msg = handlers.to_generate(str(run), "6")
    assert msg.startswith("⚠️") and "step 6" in msg and "4" in msg
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"final")
    prompt, lora, _, msg = handlers.send_final(str(run))
    assert lora["value"] == str(run.resolve() / "pytorch_lora_weights.safetensors")
    assert msg == "➡️ Sent pytorch_lora_weights.safetensors to Generate."


@pytest.mark.parametrize("run_dir", [None, ""])
def test_actions_without_a_run(workspace, run_dir):
    handlers = TrainHandlers(AppContext(workspace=workspace, jobs=RecordingService()), [])
    assert handlers.to_generate(run_dir)[-1] == "⚠️ Pick a run first."
    assert handlers.on_export(run_dir, "4") == "⚠️ Pick a run and a checkpoint."
    assert handlers.on_compare(run_dir)[1] == "⚠️ Pick a run first."
