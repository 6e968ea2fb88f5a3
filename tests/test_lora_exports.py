"""One Kohya converter for every LoRA file the studio writes, and "export checkpoint N as the
run's LoRA": afterwards every file of the run (and of its bundle and push) describes step N."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from _train_support import fast_overrides, make_dataset
from hub_standin import online_standin
from safetensors.torch import load, load_file, save_file
from share_fixtures import assert_sdxl_kohya

from studio.lora.kohya import KohyaError, write_kohya
from studio.lora.verify import verify_lora
from studio.runs.events import read_events

RANK, ALPHA = 4, 8.0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the converter ----------------------------------------------------------------------------
def _diffusers_file(path: Path, alphas: dict[str, float]) -> dict[str, torch.Tensor]:
    """A diffusers SDXL LoRA file mixing every spelling the studio meets, with adapter metadata
    giving ``alphas`` per component."""
    g = torch.Generator().manual_seed(0)
    attn = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    shapes = {
        f"{attn}.to_q.lora_A.weight": (4, 32), f"{attn}.to_q.lora_B.weight": (32, 4),
        f"{attn}.to_q.lora_magnitude_vector": (32,),
        f"{attn}.to_out.0.lora.down.weight": (4, 32), f"{attn}.to_out.0.lora.up.weight": (32, 4),
        "unet.down_blocks.1.resnets.0.conv1.lora_A.weight": (4, 32, 3, 3),
        "unet.down_blocks.1.resnets.0.conv1.lora_B.weight": (32, 4, 1, 1),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight":
            (4, 16),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight":
            (16, 4),
        "text_encoder_2.encoder.layers.1.self_attn.out_proj.lora_A.weight": (3, 16),
        "text_encoder_2.encoder.layers.1.self_attn.out_proj.lora_B.weight": (16, 3),
    }
    sd = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    meta = {f"{c}.lora_alpha": a for c, a in alphas.items()} | {"unet.r": 4}
    save_file(sd, str(path), metadata={"format": "pt", "lora_adapter_metadata": json.dumps(meta)})
    return sd


def test_every_spelling_becomes_the_kohya_ldm_layout_with_the_trained_scale(tmp_path):
    src = tmp_path / "pytorch_lora_weights.safetensors"
    sd = _diffusers_file(src, {"unet": ALPHA, "text_encoder": 2.0})
    out = write_kohya(src, tmp_path / "k.safetensors")
    kohya = load_file(str(out))
    # kohya sd-scripts' own SDXL names: the original (LDM) UNet layout
    q = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    o = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_out_0"
    conv = "lora_unet_input_blocks_4_0_in_layers_2"
    te1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    te2 = "lora_te2_text_model_encoder_layers_1_self_attn_out_proj"
    assert set(kohya) == {f"{m}.{k}" for m in (q, o, conv, te1, te2)
                          for k in ("lora_down.weight", "lora_up.weight", "alpha")} | {
        f"{q}.dora_scale"}
    attn = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert torch.equal(kohya[f"{q}.lora_down.weight"], sd[f"{attn}.to_q.lora_A.weight"])
    assert torch.equal(kohya[f"{o}.lora_up.weight"], sd[f"{attn}.to_out.0.lora.up.weight"])
    # DoRA magnitudes shaped like the weight, (out, 1): ComfyUI reads the axis from the shape
    assert torch.equal(kohya[f"{q}.dora_scale"],
                       sd[f"{attn}.to_q.lora_magnitude_vector"].reshape(32, 1))
    # alpha: the adapter metadata per component, else the rank (te2 has none: rank 3)
    alphas = {m: float(kohya[f"{m}.alpha"]) for m in (q, o, conv, te1, te2)}
    assert alphas == {q: ALPHA, o: ALPHA, conv: ALPHA, te1: 2.0, te2: 3.0}
    meta = assert_sdxl_kohya(out, alpha=ALPHA)
    assert meta["ss_network_dim"] == "4"
    # An explicit alpha (the run's config) wins for every module.
    out2 = write_kohya(src, tmp_path / "k2.safetensors", lora_alpha=16)
    assert {float(v) for k, v in load_file(str(out2)).items() if k.endswith(".alpha")} == {16.0}
    assert_sdxl_kohya(out2, alpha=16.0)


def test_files_that_cannot_be_converted_say_so_in_one_sentence(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"unet.conv_in.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(KohyaError, match="not a diffusers SDXL LoRA key"):
        write_kohya(bad, tmp_path / "k.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(KohyaError, match="cannot be read as safetensors"):
        write_kohya(junk, tmp_path / "k.safetensors")
    assert not (tmp_path / "k.safetensors").exists()


# ---- a real (tiny) training -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models) -> Path:
    """4 steps, checkpoints and validation samples at steps 2 and 4, alpha (8) != rank (4)."""
    from studio.config import load_config
    from studio.train.loop import train

    ds = make_dataset(tmp_path_factory.mktemp("ds") / "me", n=2)
    run = tmp_path_factory.mktemp("runs") / "me-lora"
    cfg = load_config(overrides=fast_overrides(run, ds, tiny_models["base"], steps=4) + [
        f"lora.rank={RANK}", f"lora.alpha={ALPHA}", "checkpoints.every_n_steps=2",
        "validation.every_n_steps=2", "validation.at_end=true", "train.learning_rate=1e-2"])
    assert train(cfg).status == "finished"
    return run


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "me-lora"))


def test_the_final_lora_of_a_training_is_listed_for_sdxl(trained, tiny_models):
    assert_sdxl_kohya(trained / "lora_kohya.safetensors", alpha=ALPHA)
    for name in ("lora_kohya.safetensors", "pytorch_lora_weights.safetensors"):
        report = verify_lora(trained / name, tiny_models["base"])  # rank 4 != alpha 8
        assert report.ok, report.summary()
    check = json.loads((trained / "manifest.json").read_text())["lora_check"]
    assert all(c["ok"] for c in check.values()) and len(check) == 2
    files = json.loads((trained / "manifest.json").read_text())["files"]
    assert set(files) == {"pytorch_lora_weights.safetensors", "lora_kohya.safetensors"}
    for name, entry in files.items():
        assert entry["sha256"] == _sha((trained / name).read_bytes())


def _zip_story(zf: zipfile.ZipFile, top: str) -> tuple[dict, str, list[str]]:
    """(manifest, card, sample paths) of a bundle; the manifest's sha256 and sizes must be those
    of the LoRA files in the zip, and every LoRA file in the zip must be in the manifest."""
    names = zf.namelist()
    manifest = json.loads(zf.read(f"{top}/manifest.json"))
    loras = {n.split("/", 1)[1] for n in names if n.endswith(".safetensors")}
    assert loras == set(manifest["files"]) == {"pytorch_lora_weights.safetensors",
                                               "lora_kohya.safetensors"}
    for name, entry in manifest["files"].items():
        data = zf.read(f"{top}/{name}")
        assert entry == {"sha256": _sha(data), "bytes": len(data)}, name
    assert_sdxl_kohya(zf.read(f"{top}/lora_kohya.safetensors"), alpha=ALPHA)
    samples = sorted(n.split("/", 1)[1] for n in names if "/samples/" in n)
    return manifest, zf.read(f"{top}/README.md").decode(), samples


def test_exporting_a_checkpoint_makes_the_run_and_its_bundle_describe_that_step(run, tmp_path):
    from studio.runs.export import export_checkpoint
    from studio.share.bundle import export_run_bundle

    ck = run / "checkpoints" / "checkpoint-000002"
    final_sha = _sha((run / "pytorch_lora_weights.safetensors").read_bytes())
    out = export_checkpoint(run, 2)
    assert out == (run / "pytorch_lora_weights.safetensors").resolve()
    assert out.read_bytes() == (ck / "pytorch_lora_weights.safetensors").read_bytes()
    assert _sha(out.read_bytes()) != final_sha
    # The Kohya file is the checkpoint's, with the run's alpha and the SDXL metadata.
    kohya = load_file(str(run / "lora_kohya.safetensors"))
    expected = load_file(str(write_kohya(ck / "pytorch_lora_weights.safetensors",
                                         tmp_path / "expected.safetensors", ALPHA)))
    assert kohya.keys() == expected.keys()
    assert all(torch.equal(kohya[k], expected[k]) for k in kohya)
    assert_sdxl_kohya(run / "lora_kohya.safetensors", alpha=ALPHA)
    assert json.loads((run / "selected_checkpoint.json").read_text())["checkpoint"] == 2
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["selected_checkpoint"] == 2
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == _sha((run / name).read_bytes()), name
    losses = [e["loss"] for e in read_events(run) if e["type"] == "step" and e["step"] <= 2]
    assert len(losses) == 2 and manifest["final_loss_mean_last10"] == pytest.approx(
        sum(losses) / 2)
    assert manifest["wall_time_s"] is not None and manifest["wall_time_s"] >= 0
    card = (run / "README.md").read_text()
    assert "| steps | 2 |" in card and "samples/step-000002/" in card
    assert "step-000004" not in card

    bundle = export_run_bundle(run, tmp_path / "b.zip")
    with zipfile.ZipFile(bundle) as zf:
        manifest, card, samples = _zip_story(zf, "me-lora")
        assert zf.read("me-lora/pytorch_lora_weights.safetensors") == \
            (ck / "pytorch_lora_weights.safetensors").read_bytes()
    assert manifest["steps"] == 2 and "| steps | 2 |" in card
    assert samples and all(s.startswith("samples/step-000002/") for s in samples)
    assert "step-000004" not in card


def test_checkpoint_bundle_and_push_describe_the_checkpoint(trained, tmp_path, monkeypatch,
                                                           tiny_models):
    from studio.cli import main
    from studio.share.bundle import export_run_bundle

    ck = trained / "checkpoints" / "checkpoint-000002"
    bundle = export_run_bundle(trained, tmp_path / "c.zip", checkpoint=2)
    with zipfile.ZipFile(bundle) as zf:
        manifest, card, samples = _zip_story(zf, "me-lora-step000002")
        assert zf.read("me-lora-step000002/pytorch_lora_weights.safetensors") == \
            (ck / "pytorch_lora_weights.safetensors").read_bytes()
    assert manifest["steps"] == 2 and "| steps | 2 |" in card and "step-000004" not in card
    assert samples and all(s.startswith("samples/step-000002/") for s in samples)
    assert not (trained / "selected_checkpoint.json").exists()  # nothing local changed

    with online_standin(monkeypatch, tmp_path) as hub:
        hub.add_token("hf_" + "k" * 34, "alice")
        monkeypatch.setenv("HF_TOKEN", "hf_" + "k" * 34)
        assert main(["push", str(trained), "--repo", "alice/ck", "--checkpoint", "2"]) == 0
        assert main(["push", str(trained), "--repo", "alice/final"]) == 0
        ck_files, final_files = hub.repo("alice/ck").files, hub.repo("alice/final").files
    assert_sdxl_kohya(ck_files["lora_kohya.safetensors"], alpha=ALPHA)
    assert_sdxl_kohya(final_files["lora_kohya.safetensors"], alpha=ALPHA)
    for files in (ck_files, final_files):  # the pushed files pass the loader self-test
        for name in ("lora_kohya.safetensors", "pytorch_lora_weights.safetensors"):
            (tmp_path / name).write_bytes(files[name])
            report = verify_lora(tmp_path / name, tiny_models["base"])
            assert report.ok, report.summary()
    assert set(load(ck_files["lora_kohya.safetensors"])) == \
        set(load(final_files["lora_kohya.safetensors"]))
    pushed = json.loads(ck_files["manifest.json"])
    assert pushed["steps"] == 2
    assert pushed["files"]["lora_kohya.safetensors"]["sha256"] == \
        _sha(ck_files["lora_kohya.safetensors"])
