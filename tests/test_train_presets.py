"""Saving the Train tab's settings as a preset (issue 13): under a name in STUDIO_HOME/presets,
listed with the bundled presets, loaded by name in the app and the CLI; bundled names and bad
names refused; an existing saved preset replaced only after "Replace"."""

from __future__ import annotations

import os
import subprocess
import sys

import gradio as gr
from _train_support import ROOT

from studio import config as cfgmod
from studio.ui.config_widgets import preset_values, widget_value
from studio.ui.context import AppContext


def _tab(ctx):
    from studio.ui import train_tab

    with gr.Blocks():
        return train_tab.build(ctx)


def _inputs(c, preset="portrait", **changed):
    pv = preset_values(preset)
    keys = [k for k, _ in c["widget_keys"]]
    vals = [widget_value(kind, pv.get(k)) for k, kind in c["widget_keys"]]
    for key, value in changed.items():
        vals[keys.index(key.replace("__", "."))] = value
    return pv, vals


def test_save_list_load_and_replace_a_preset(workspace, home):
    c = _tab(AppContext(workspace=workspace))
    p = c["presets"]
    pv, vals = _inputs(c, train__max_train_steps=45, data__resolution=64, validation__steps=3)
    msg, dropdown, new_pv, replace = p.save("my-64px", "portrait", "lora.rank=4", pv, *vals)
    assert msg.startswith("✅ Saved preset **my-64px**"), msg
    path = home / "presets" / "my-64px.yaml"
    assert path.is_file()
    assert dropdown["value"] == "my-64px" and "my-64px" in dropdown["choices"]
    assert "portrait" in dropdown["choices"] and replace["visible"] is False
    assert cfgmod.list_presets()[-1] == "my-64px"  # after the bundled ones
    cfg = cfgmod.load_config(preset="my-64px")
    assert (cfg.train.max_train_steps, cfg.data.resolution, cfg.validation.steps,
            cfg.lora.rank) == (45, 64, 3, 4)
    assert cfg.train.learning_rate == 1e-4  # the rest of portrait came along
    assert new_pv["data.resolution"] == 64
    note = path.read_text().splitlines()[0]
    assert note.startswith("# Saved from the Train tab") and "from preset portrait" in note
    assert "train.max_train_steps" in note and "extra overrides" in note
    assert "data.dataset" not in path.read_text() and "output_dir" not in path.read_text()

    # Saving again under that name asks first; Replace overwrites.
    pv, vals = _inputs(c, train__max_train_steps=99)
    msg, dropdown, _, replace = p.save("my-64px", "portrait", "", pv, *vals)
    assert "confirm" in msg and replace["visible"] is True and dropdown == gr.skip()
    assert cfgmod.load_config(preset="my-64px").train.max_train_steps == 45
    msg, *_ = p.replace("my-64px", "portrait", "", pv, *vals)
    assert msg.startswith("✅") and cfgmod.load_config(preset="my-64px").train.max_train_steps == 99

    # The page load reads the list again.
    assert "my-64px" in p.refresh()["choices"]


def test_bad_and_bundled_names_are_refused(workspace, home):
    c = _tab(AppContext(workspace=workspace))
    pv, vals = _inputs(c)
    for name, words in (("portrait", "bundled preset"), ("", "Invalid preset name"),
                        ("../x", "Invalid preset name"), ("a/b", "Invalid preset name")):
        msg, dropdown, _, _ = c["presets"].save(name, "portrait", "", pv, *vals)
        assert msg.startswith("⚠️") and words in msg and "\n" not in msg, (name, msg)
    assert not (home / "presets").exists() or not list((home / "presets").iterdir())
    assert (cfgmod.PRESETS_DIR / "portrait.yaml").is_file()


def test_the_cli_finds_a_saved_preset_by_name(workspace, home, tmp_path):
    c = _tab(AppContext(workspace=workspace))
    pv, vals = _inputs(c, train__max_train_steps=45)
    assert c["presets"].save("mine", "portrait", "", pv, *vals)[0].startswith("✅")
    env = {**os.environ, "STUDIO_HOME": str(home)}

    def cli(preset):
        return subprocess.run([sys.executable, "-m", "studio", "train", "--dataset",
                               str(tmp_path), "--out", str(tmp_path / f"run-{preset}"),
                               "--preset", preset, "--set", "train.learnin_rate=1"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    r = cli("mine")  # the preset loads; the typo after it is the error
    assert r.returncode == 2 and r.stderr.strip().endswith("train.learnin_rate: unknown setting")
    r = cli("nosuch")
    assert r.returncode == 2 and "Unknown preset 'nosuch'" in r.stderr and "mine" in r.stderr
