"""Train-tab helpers without a browser: config widgets <-> overrides, checkpoint export."""

from __future__ import annotations

from studio.config import TrainConfig, load_config
from studio.runs.export import export_checkpoint
from studio.runs.folder import RunError
from studio.ui.config_widgets import (
    config_fields,
    flatten,
    overrides_from_widgets,
    widget_kind,
    widget_value,
)


def test_every_config_field_gets_a_widget_and_unchanged_values_give_no_overrides():
    fields = [(k, widget_kind(fi.annotation)[0]) for _, items in config_fields(TrainConfig)
              for k, fi in items]
    keys = {k for k, _ in fields}
    flat = flatten(load_config(preset="portrait").model_dump(mode="json"))
    assert keys == set(flat) - {"output_dir", "data.dataset", "config_version"}  # 1:1 with the config
    values = [widget_value(kind, flat[k]) for k, kind in fields]
    assert overrides_from_widgets(fields, values, flat) == []
    i = [k for k, _ in fields].index("train.learning_rate")
    j = [k for k, _ in fields].index("train.mixed_precision")
    values[i], values[j] = 2e-4, "no"
    ovr = overrides_from_widgets(fields, values, flat)
    assert ovr == ["train.learning_rate=0.0002", 'train.mixed_precision="no"']
    cfg = load_config(preset="portrait", overrides=ovr)
    assert cfg.train.learning_rate == 2e-4 and cfg.train.mixed_precision == "no"


def test_export_checkpoint_replaces_the_run_lora_atomically(tmp_path):
    run = tmp_path / "run"
    ck = run / "checkpoints" / "checkpoint-000004"
    ck.mkdir(parents=True)
    (ck / "pytorch_lora_weights.safetensors").write_bytes(b"ckpt4")
    try:
        export_checkpoint(run, 4)
        raise AssertionError("an incomplete checkpoint must be refused")
    except RunError as exc:
        assert "no complete checkpoint at step 4" in str(exc)
    (ck / "COMPLETE").write_text("")
    (run / "config.yaml").write_text(load_config().to_yaml())
    (run / "lora_kohya.safetensors").write_bytes(b"stale")
    out = export_checkpoint(run, 4)
    assert out.read_bytes() == b"ckpt4"
    assert not (run / "lora_kohya.safetensors").exists()  # not a real LoRA: stale file removed
