"""Training config, presets, dotted overrides, one-line CLI errors, checkpoint bookkeeping."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _train_support import ROOT, env

from studio.config import ConfigError, TrainConfig, list_presets, load_config

PRESETS = ["portrait", "portrait-quality", "style", "object", "low-vram", "seed-000-base-run",
           "seed-000-improved-run"]


def test_every_field_is_documented():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} has no description"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)
    walk(TrainConfig)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_validate(name):
    assert name in list_presets()
    cfg = load_config(preset=name)
    raw = yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())
    assert len(raw) <= 6  # sparse overrides, not a full config
    assert cfg.train.learning_rate > 0


def test_preset_values_follow_the_seeds():
    base = load_config(preset="seed-000-base-run")
    assert (base.train.learning_rate, base.train.max_train_steps, base.checkpoints.every_n_steps,
            base.data.prior_loss_weight, base.data.num_class_images,
            base.validation.every_n_epochs) == (1e-5, 100, 20, 0.5, 5, 10)
    assert base.data.with_prior_preservation
    imp = load_config(preset="seed-000-improved-run")
    assert (imp.train.learning_rate, imp.train.max_train_steps, imp.checkpoints.every_n_steps,
            imp.data.prior_loss_weight, imp.data.num_class_images,
            imp.validation.every_n_epochs) == (2e-4, 500, 100, 0.8, 10, 15)
    p = load_config(preset="portrait")
    assert (p.train.learning_rate, p.train.max_train_steps, p.checkpoints.every_n_steps) == (1e-4, 500, 100)
    q = load_config(preset="portrait-quality")
    assert q.data.with_prior_preservation and q.lora.train_text_encoder
    lv = load_config(preset="low-vram")
    assert lv.train.gradient_checkpointing and lv.train.optimizer == "adamw8bit"
    assert lv.data.cache_latents and lv.data.cache_text_embeddings and lv.lora.rank <= 16
    assert lv.train.batch_size == 1 and lv.train.mixed_precision in ("fp16", "bf16")
    assert load_config(preset="style").validation.every_n_epochs == 2


def test_every_optimizer_name_has_a_builder():
    """train.optimizer's choices and the optimizer table are the same names."""
    import typing

    from studio.config import TrainSection
    from studio.train.optimizers import OPTIMIZERS

    names = typing.get_args(TrainSection.model_fields["optimizer"].annotation)
    assert set(names) == set(OPTIMIZERS)


def test_overrides_are_yaml_scalars_and_win_over_preset(tmp_path):
    cfg = load_config(preset="portrait", overrides=["train.learning_rate=2e-4", "lora.rank=8",
                                                    "data.random_flip=true",
                                                    "validation.prompts=[a, b]"])
    assert cfg.train.learning_rate == 2e-4 and cfg.lora.rank == 8 and cfg.data.random_flip
    assert cfg.validation.prompts == ["a", "b"]
    # config.yaml round trip
    p = tmp_path / "config.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(config_path=p) == cfg
    # preset by path
    assert load_config(preset=str(ROOT / "presets" / "style.yaml")).lora.rank == 32


@pytest.mark.parametrize("override,expected", [
    ("train.learnin_rate=1e-4", "train.learnin_rate: unknown setting"),
    ("train.learning_rate=-1", "train.learning_rate: must be > 0"),
    ("train.optimizer=sgd", "train.optimizer: must be one of"),
    ("data.resolution=100", "data.resolution: must be a multiple of 8"),
    ("lora.rank=abc", "lora.rank:"),
    ("nosuch.key=1", "nosuch: unknown setting"),
])
def test_bad_override_is_one_line_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as ei:
        load_config(overrides=[override])
    msg = str(ei.value)
    assert msg.startswith(expected) and "\n" not in msg


def test_bad_preset_names_the_file_and_key(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("train:\n  learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match=r"^preset mine.yaml: train.learning_rat: unknown setting$"):
        load_config(preset=str(bad))
    with pytest.raises(ConfigError, match="Unknown preset 'nope'"):
        load_config(preset="nope")


def _cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio", "train", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=240)


def test_cli_bad_set_and_resume_without_checkpoint(tmp_path):
    run = tmp_path / "run"
    r = _cli("--dataset", str(tmp_path), "--out", str(run), "--set", "train.learnin_rate=1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: train.learnin_rate: unknown setting"]
    # the failure is also an event for the UI
    from studio.runs.events import read_events

    ev = read_events(run)
    assert [e["type"] for e in ev] == ["error", "end"] and ev[1]["status"] == "failed"

    run2 = tmp_path / "run2"
    ds = tmp_path / "ds"
    ds.mkdir()
    r = _cli("--dataset", str(ds), "--out", str(run2), "--resume", "latest")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot resume:") and "no complete checkpoint" in last
    ev = read_events(run2)
    assert ev[-2]["type"] == "error" and ev[-2]["message"] == last[len("error: "):]
    assert ev[-1]["type"] == "end" and ev[-1]["status"] == "failed"


def test_checkpoint_atomic_prune_and_disk_check(tmp_path):
    from studio.runs import checkpoints as ck

    def writer(d: Path):  # a training state that loads (resume validates what it picks)
        import torch

        torch.save({"step": 0}, d / ck.STATE_FILE)

    for s in (2, 4, 6):
        ck.save_checkpoint(tmp_path, s, writer, total_limit=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [4, 6]
    assert ck.resolve_resume(tmp_path, "latest").name == "checkpoint-000006"
    # a save killed half-way: a temp folder without marker is never "latest", and is cleaned
    partial = tmp_path / "checkpoints" / ".tmp-checkpoint-000008-1"
    partial.mkdir()
    (tmp_path / "checkpoints" / "checkpoint-000010").mkdir()  # no COMPLETE marker
    assert ck.resolve_resume(tmp_path, "latest").name == "checkpoint-000006"
    with pytest.raises(ck.CheckpointError, match="incomplete"):
        ck.resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "checkpoint-000010"))
    ck.clean_partial(tmp_path)
    assert not partial.exists()
    # a failing writer leaves nothing behind
    with pytest.raises(RuntimeError):
        ck.save_checkpoint(tmp_path, 12, lambda d: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    with pytest.raises(ck.CheckpointError, match="Not enough free disk space"):
        ck.save_checkpoint(tmp_path, 14, writer, need_bytes=1 << 60)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [4, 6]


def test_mixed_precision_no_survives_yaml():
    cfg = load_config(preset="portrait", overrides=["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"


def test_set_takes_several_pairs_and_repeats():
    from studio.cli import build_parser

    args = build_parser().parse_args(["train", "--dataset", "d", "--out", "o", "--set",
                                      "train.learning_rate=2e-4", "lora.rank=8", "--set",
                                      "data.resolution=512"])
    assert args.overrides == ["train.learning_rate=2e-4", "lora.rank=8", "data.resolution=512"]


# ---- config versions -------------------------------------------------------------------------
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_config_written_before_versions_loads_as_the_current_version(tmp_path):
    """tests/fixtures/config_v0.yaml is a run's config.yaml exactly as the code before config
    versions wrote it (no config_version key)."""
    from studio.config import CONFIG_VERSION

    raw = yaml.safe_load((FIXTURES / "config_v0.yaml").read_text())
    assert "config_version" not in raw
    cfg = load_config(config_path=FIXTURES / "config_v0.yaml")
    # the file states the old default cache_latents: false, which it keeps (a resumed old run
    # trains as it did); today's default is empty (cached unless a random crop or flip is on)
    assert cfg == load_config(preset="portrait", overrides=[
        "data.dataset=/home/me/.studio/datasets/ohwx-person",
        "output_dir=/home/me/.studio/runs/ohwx-portrait", "data.cache_latents=false"])
    assert cfg.config_version == CONFIG_VERSION == 1
    # saved again, it states its version and loads to the same config
    p = tmp_path / "config.yaml"
    p.write_text(cfg.to_yaml())
    assert yaml.safe_load(p.read_text())["config_version"] == CONFIG_VERSION
    assert load_config(config_path=p) == cfg


def _rename_lr(data: dict) -> dict:
    """A fake migration: an old spelling train.lr became train.learning_rate."""
    train = dict(data.get("train") or {})
    if "lr" in train:
        train["learning_rate"] = train.pop("lr")
    return {**data, "train": train}


def test_a_migration_renames_an_old_key_before_validation(tmp_path, monkeypatch):
    from studio import config as cfgmod

    old = tmp_path / "old.yaml"
    old.write_text("train:\n  lr: 3.0e-4\n")  # no config_version: version 0
    current = tmp_path / "current.yaml"
    current.write_text(f"config_version: {cfgmod.CONFIG_VERSION}\ntrain:\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"^old.yaml: train.lr: unknown setting$"):
        load_config(config_path=old)
    monkeypatch.setattr(cfgmod, "MIGRATIONS", [_rename_lr])  # as if 0 -> 1 had renamed it
    assert load_config(config_path=old).train.learning_rate == 3e-4
    # a file already at the current version is not migrated
    with pytest.raises(ConfigError, match=r"^current.yaml: train.lr: unknown setting$"):
        load_config(config_path=current)


def test_migrations_chain_up_to_a_new_version(tmp_path, monkeypatch):
    from studio import config as cfgmod

    v0 = tmp_path / "v0.yaml"
    v0.write_text((FIXTURES / "config_v0.yaml").read_text().replace("learning_rate:", "lr:"))
    monkeypatch.setattr(cfgmod, "CONFIG_VERSION", 2)
    monkeypatch.setattr(cfgmod, "MIGRATIONS", [*cfgmod.MIGRATIONS, _rename_lr])
    cfg = load_config(config_path=v0)
    assert cfg.config_version == 2 and cfg.train.learning_rate == 1e-4 and cfg.lora.rank == 16
    v1 = tmp_path / "v1.yaml"
    v1.write_text("config_version: 1\ntrain:\n  lr: 5.0e-5\n")
    assert load_config(config_path=v1).train.learning_rate == 5e-5
    assert load_config().config_version == 2  # a new config is the current version


@pytest.mark.parametrize("text,expected", [
    ("config_version: 9\n", "c.yaml: config_version: 9 is newer than this studio reads (1)"),
    ("config_version: one\n", "c.yaml: config_version: must be a whole number >= 0"),
])
def test_a_bad_or_newer_version_is_one_line(tmp_path, text, expected):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(config_path=p)
    assert str(ei.value).startswith(expected) and "\n" not in str(ei.value)
    with pytest.raises(ConfigError, match=r"^config_version: must be 1"):
        load_config(overrides=["config_version=0"])


def test_a_preset_without_a_version_is_current_and_one_with_a_version_is_migrated(tmp_path,
                                                                                   monkeypatch):
    from studio import config as cfgmod

    monkeypatch.setattr(cfgmod, "MIGRATIONS", [_rename_lr])
    sparse = tmp_path / "sparse.yaml"
    sparse.write_text("train:\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"^preset sparse.yaml: train.lr: unknown setting$"):
        load_config(preset=str(sparse))
    stated = tmp_path / "stated.yaml"
    stated.write_text("config_version: 0\ntrain:\n  lr: 3.0e-4\n")
    assert load_config(preset=str(stated)).train.learning_rate == 3e-4
