"""verify-lora: every LoRA file the studio writes loads completely in ComfyUI, A1111/Forge and
diffusers (their key rules, reimplemented), at the tiny model's and at full SDXL shapes; a
renamed key or missing SDXL metadata fails, naming it; push and bundle refuse such a file."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from _train_support import fast_overrides, make_dataset
from safetensors.torch import load_file, save_file

from studio.lora.kohya import KOHYA_METADATA, to_kohya
from studio.lora.verify import check_tensors, read_lora, verify_lora

KOHYA, DIFFUSERS = "lora_kohya.safetensors", "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def te_dora_run(tmp_path_factory, tiny_models) -> Path:
    """2 steps with LoRA on the UNet and both text encoders, DoRA, alpha (2) != rank (4), a
    checkpoint at every step."""
    from studio.config import load_config
    from studio.train.loop import train

    ds = make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)
    run = tmp_path_factory.mktemp("runs") / "te-dora"
    cfg = load_config(overrides=fast_overrides(run, ds, tiny_models["base"], steps=2) + [
        "lora.train_text_encoder=true", "lora.use_dora=true", "lora.alpha=2",
        "checkpoints.every_n_steps=1", "train.learning_rate=1e-2"])
    assert train(cfg).status == "finished"
    return run


def _passes(path: Path, base: Path) -> str:
    report = verify_lora(path, base)
    assert report.ok, report.summary()
    return report.summary()


def test_every_file_of_a_text_encoder_dora_run_passes(te_dora_run, tiny_models):
    base = tiny_models["base"]
    kohya = load_file(str(te_dora_run / KOHYA))
    assert any(k.startswith("lora_te1_") for k in kohya) and any(
        k.startswith("lora_te2_") for k in kohya) and any(k.endswith(".dora_scale") for k in kohya)
    summary = _passes(te_dora_run / KOHYA, base)
    report = verify_lora(te_dora_run / KOHYA, base)
    n, dora = len(kohya), sum(1 for k in kohya if k.endswith(".dora_scale"))
    assert [(t.target, t.matched, t.total) for t in report.targets] == [
        ("ComfyUI", n, n), ("A1111", n, n), ("diffusers", n - dora, n - dora)]
    assert summary.startswith(f"ComfyUI: {n:,} of {n:,} keys matched; A1111: {n:,} of {n:,} ")
    # said, not hidden: A1111's DoRA axis, diffusers dropping dora_scale from Kohya files
    assert "A1111 1.10 normalises DoRA per input column" in summary
    assert f"diffusers drops the {dora} dora_scale tensors" in summary
    assert summary.endswith("SDXL metadata present")
    assert _passes(te_dora_run / DIFFUSERS, base).startswith("diffusers: all loaded")
    for ck in sorted((te_dora_run / "checkpoints").iterdir()):
        _passes(ck / KOHYA, base)
        _passes(ck / DIFFUSERS, base)
    manifest = json.loads((te_dora_run / "manifest.json").read_text())
    assert set(manifest["lora_check"]) == {KOHYA, DIFFUSERS}
    assert all(c["ok"] for c in manifest["lora_check"].values())
    from studio.runs.events import read_events

    logs = [e.get("message", "") for e in read_events(te_dora_run) if e["type"] == "log"]
    assert not [m for m in logs if "loader check" in m]  # checkpoints and final were checked
    card = (te_dora_run / "README.md").read_text()
    assert "Loader check" in card and f"`{KOHYA}`: passes: ComfyUI:" in card


def test_push_and_bundle_files_pass_and_a_broken_file_is_refused(te_dora_run, tiny_models,
                                                                 tmp_path):
    from studio.share.bundle import export_run_bundle
    from studio.share.runfiles import ShareError

    for checkpoint in (None, 1):
        out = export_run_bundle(te_dora_run, tmp_path / f"b{checkpoint}.zip", checkpoint)
        with zipfile.ZipFile(out) as zf:
            for name in zf.namelist():
                if name.endswith(".safetensors"):
                    (tmp_path / "x.safetensors").write_bytes(zf.read(name))
                    _passes(tmp_path / "x.safetensors", tiny_models["base"])
    run = Path(shutil.copytree(te_dora_run, tmp_path / "broken"))
    tensors, meta = read_lora(run / KOHYA)
    key = next(k for k in tensors if k.endswith("_to_q.lora_up.weight"))
    tensors[key.replace("_to_q.", "_to_qq.")] = tensors.pop(key)
    save_file(tensors, str(run / KOHYA), metadata=meta)
    with pytest.raises(ShareError, match="would not load fully and is not shared") as err:
        export_run_bundle(run, tmp_path / "c.zip")
    assert "qq" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "c.zip").exists()


def _kohya_file(tmp_path: Path, tiny_models, metadata=None) -> Path:
    from lora_layouts import tiny_kohya_ldm

    path = tmp_path / "k.safetensors"
    tiny_kohya_ldm(tiny_models["base"], path, metadata=metadata)
    return path


def test_a_renamed_key_fails_naming_it(tmp_path, tiny_models, capsys):
    from studio.cli import main

    path = _kohya_file(tmp_path, tiny_models)
    assert main(["verify-lora", str(path), "--base", str(tiny_models["base"])]) == 0
    tensors, meta = read_lora(path)
    key = next(k for k in tensors if "attn2_to_k.lora_down" in k)
    renamed = key.replace("attn2_to_k", "attn2_to_key")
    tensors[renamed] = tensors.pop(key)
    save_file(tensors, str(path), metadata=meta)
    report = verify_lora(path, tiny_models["base"])
    assert not report.ok
    for target in report.targets:
        assert not target.ok and any("to_key" in k for k in target.unmatched), target
    capsys.readouterr()
    assert main(["verify-lora", str(path), "--base", str(tiny_models["base"])]) == 2
    out = capsys.readouterr()
    assert renamed in out.out and renamed in out.err


def test_missing_sdxl_metadata_fails_naming_it(tmp_path, tiny_models, capsys):
    from studio.cli import main

    meta = {k: v for k, v in KOHYA_METADATA.items() if k != "ss_base_model_version"}
    path = _kohya_file(tmp_path, tiny_models, metadata=meta)
    report = verify_lora(path, tiny_models["base"])
    assert not report.ok and all(t.ok for t in report.targets)
    assert report.problems() == ["SDXL metadata missing: ss_base_model_version (sdxl_...) "
                                 "(A1111 and Forge hide the LoRA from SDXL users)"]
    assert main(["verify-lora", str(path), "--base", str(tiny_models["base"])]) == 2
    assert "ss_base_model_version" in capsys.readouterr().err


def _full_size_portrait(names, rank: int = 4) -> dict[str, torch.Tensor]:
    """The portrait preset's LoRA layout (UNet attention projections) at full SDXL shapes."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for name, layer in names.modules["unet"].items():
        if name.endswith(("to_q", "to_k", "to_v", "to_out.0")):
            sd[f"unet.{name}.lora_A.weight"] = torch.randn(rank, layer.fan_in, generator=g) * 1e-3
            sd[f"unet.{name}.lora_B.weight"] = torch.randn(layer.fan_out, rank, generator=g) * 1e-3
    return sd


def test_full_size_sdxl_portrait_layout_matches_every_key_in_every_loader():
    from studio.lora.sdxl_names import full_size

    names = full_size()
    assert {c: len(m) for c, m in names.modules.items()} == {
        "unet": 794, "text_encoder": 72, "text_encoder_2": 193}
    sd = _full_size_portrait(names)
    assert len(sd) == 1120  # 560 attention projections x (down, up)
    kohya = to_kohya(sd, 16.0)
    report = check_tensors(kohya, dict(KOHYA_METADATA), names)
    assert report.ok, report.summary()
    assert report.summary() == ("ComfyUI: 1,680 of 1,680 keys matched; A1111: 1,680 of 1,680; "
                                "diffusers: all loaded; SDXL metadata present")
    diff = check_tensors(sd, {}, names)
    assert diff.ok and diff.summary().startswith("diffusers: all loaded")
    # kohya's native names: the LDM layout of the original SDXL UNet
    assert "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_out_0.lora_up.weight" in kohya


def test_every_unet_and_text_encoder_module_matches_with_ldm_names_only():
    """The evidence for kohya's native names: with the diffusers spelling, A1111's SD 1.x block
    arithmetic misses SDXL's first upsampler and added-conditioning embedding, which diffusers' own
    Kohya loader mangles too; with the LDM spelling every module matches in all three."""
    from studio.lora import kohya as kohya_mod
    from studio.lora.sdxl_names import full_size

    names = full_size()
    sd = {}
    for comp, modules in names.modules.items():
        for name, layer in modules.items():
            if name == "text_projection":
                continue
            conv, k = layer.kind == "conv", layer.kernel
            sd[f"{comp}.{name}.lora_A.weight"] = torch.zeros(
                (4, layer.fan_in, k, k) if conv else (4, layer.fan_in))
            sd[f"{comp}.{name}.lora_B.weight"] = torch.zeros(
                (layer.fan_out, 4, 1, 1) if conv else (layer.fan_out, 4))
    assert check_tensors(to_kohya(sd, 8.0), dict(KOHYA_METADATA), names).ok
    real = kohya_mod.ldm_name
    kohya_mod.ldm_name = lambda module: None  # the diffusers spelling
    try:
        spelled = check_tensors(to_kohya(sd, 8.0), dict(KOHYA_METADATA), names)
    finally:
        kohya_mod.ldm_name = real
    comfy, a1111, diffusers = spelled.targets
    assert comfy.ok
    assert len(a1111.unmatched) == 9 and {k.split(".")[0] for k in a1111.unmatched} == {
        "lora_unet_add_embedding_linear_1", "lora_unet_add_embedding_linear_2",
        "lora_unet_up_blocks_0_upsamplers_0_conv"}
    assert not diffusers.ok


def test_the_train_tab_shows_the_recorded_check(te_dora_run):
    from studio.runs.monitor import RunView
    from studio.ui.train_view import status_markdown

    text = status_markdown(RunView(run_dir=te_dora_run, name="te-dora", status="finished",
                                   step=2, total_steps=2))
    assert "LoRA loader check:" in text
    assert f"`{KOHYA}`: passes: ComfyUI:" in text and f"`{DIFFUSERS}`: passes: diffusers" in text
    running = status_markdown(RunView(run_dir=te_dora_run, name="te-dora", status="running"))
    assert "loader check" not in running


def test_a_checkpoint_that_fails_the_check_is_a_training_warning(tmp_path, tiny_models):
    from studio.train.state import check_lora

    folder = tmp_path / "checkpoint-000003"
    path = _kohya_file(tmp_path, tiny_models)
    tensors, _ = read_lora(path)
    folder.mkdir()
    save_file(tensors, str(folder / KOHYA), metadata={})  # no SDXL metadata
    warnings: list[str] = []
    check_lora(folder, str(tiny_models["base"]), warnings.append, folder.name)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{KOHYA} of checkpoint-000003 fails the loader check: ")
    assert "ss_base_model_version" in warnings[0]
