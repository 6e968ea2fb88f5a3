"""Push to / load from the Hub, against a local stand-in of the Hub API on 127.0.0.1 (HF_ENDPOINT)."""

from __future__ import annotations

import io
import logging
import secrets
import zipfile
from pathlib import Path

import pytest
from hub_standin import online_standin
from share_fixtures import ALPHA, INSTANCE_PROMPT, assert_sdxl_kohya, build_dataset, build_run

from studio.share.hub import ShareError, push_dataset, push_run

REQUIRED_TAGS = {"text-to-image", "diffusers", "lora", "template:sd-lora", "stable-diffusion-xl"}


def new_token() -> str:
    return "hf_" + secrets.token_hex(17)


@pytest.fixture(scope="session")
def run_template(tmp_path_factory, tiny_models) -> Path:
    return build_run(tmp_path_factory.mktemp("runs") / "me-lora", tiny_models["base"])


@pytest.fixture()
def run_dir(run_template, home) -> Path:
    import shutil

    dst = home / "runs" / "me-lora"
    shutil.copytree(run_template, dst)
    return dst


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """The stand-in Hub, with huggingface_hub pointed at it and online for this test only."""
    with online_standin(monkeypatch, tmp_path) as server:
        yield server


@pytest.fixture()
def alice(hub, monkeypatch) -> str:
    tok = new_token()
    hub.add_token(tok, "alice", orgs=["alice-lab"])
    monkeypatch.setenv("HF_TOKEN", tok)
    return tok


def card_meta(hub, repo_id: str, repo_type: str = "model") -> dict:
    from huggingface_hub import DatasetCard, ModelCard

    text = hub.repo(repo_id, repo_type).files["README.md"].decode()
    cls = DatasetCard if repo_type == "dataset" else ModelCard
    return cls(text).data.to_dict()


# ---- push a run -------------------------------------------------------------------------------
def test_push_run_uploads_lora_card_samples_config_private_by_default(hub, alice, run_dir):
    progress = []
    res = push_run(run_dir, "alice/me-lora", progress=lambda f, w: progress.append((f, w)))
    repo = hub.repo("alice/me-lora")
    assert repo is not None and repo.private is True and res.private is True and res.created
    assert set(repo.files) == {"README.md", "config.yaml", "manifest.json",
                               "pytorch_lora_weights.safetensors", "lora_kohya.safetensors",
                               "samples/step-000004/0.png", "samples/step-000004/1.png"}
    assert repo.files["pytorch_lora_weights.safetensors"] == \
        (run_dir / "pytorch_lora_weights.safetensors").read_bytes()
    assert repo.files["lora_kohya.safetensors"] == (run_dir / "lora_kohya.safetensors").read_bytes()
    assert_sdxl_kohya(repo.files["lora_kohya.safetensors"], alpha=ALPHA)
    assert len(repo.commits) == 1  # one commit for everything
    assert res.url == f"{hub.url}/alice/me-lora"
    assert progress[-1][0] == 1.0 and [f for f, _ in progress] == sorted(f for f, _ in progress)

    meta = card_meta(hub, "alice/me-lora")  # huggingface_hub's own card parser
    assert meta["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert meta["instance_prompt"] == INSTANCE_PROMPT
    assert REQUIRED_TAGS <= set(meta["tags"])
    assert meta["license"] == "openrail++"
    widget = meta["widget"]
    assert [w["output"]["url"] for w in widget] == ["samples/step-000004/0.png",
                                                    "samples/step-000004/1.png"]
    assert widget[0]["text"] == f"{INSTANCE_PROMPT}, smiling"
    for w in widget:
        assert w["output"]["url"] in repo.files
    body = repo.files["README.md"].decode()
    for needle in ("load_lora_weights(\"alice/me-lora\"", "models/Lora/", "ComfyUI",
                   "Trained by the studio trainer"):  # the run's own card body is kept
        assert needle in body
    assert "THIS_REPO_OR_FOLDER" not in body


def test_push_public_and_repush_updates(hub, alice, run_dir):
    res = push_run(run_dir, "alice/public-lora", private=False)
    assert hub.repo("alice/public-lora").private is False and res.private is False
    # Re-push a checkpoint: same repo updated (no failure), old samples replaced.
    res2 = push_run(run_dir, "alice/public-lora", checkpoint=2)
    repo = hub.repo("alice/public-lora")
    assert not res2.created and len(repo.commits) == 2
    assert repo.files["pytorch_lora_weights.safetensors"] == (
        run_dir / "checkpoints/checkpoint-000002/pytorch_lora_weights.safetensors").read_bytes()
    assert sorted(p for p in repo.files if p.startswith("samples/")) == [
        "samples/step-000002/0.png", "samples/step-000002/1.png"]
    meta = card_meta(hub, "alice/public-lora")
    assert all(w["output"]["url"].startswith("samples/step-000002/") for w in meta["widget"])
    assert "checkpoint at step 2" in repo.files["README.md"].decode() or \
        "checkpoint" in repo.files["README.md"].decode()
    # The checkpoint had no Kohya file: one was converted with the adapter's alpha.
    from safetensors import safe_open

    with safe_open(str(run_dir / "lora_kohya.safetensors"), "pt"):
        pass
    kohya = repo.files["lora_kohya.safetensors"]
    assert_sdxl_kohya(kohya, alpha=ALPHA)  # A1111/Forge list it for SDXL users
    from safetensors.torch import load

    sd = load(kohya)
    alphas = {float(v) for k, v in sd.items() if k.endswith(".alpha")}
    assert alphas == {float(ALPHA)} and all(k.startswith("lora_unet_") for k in sd)


def test_push_to_org_namespace(hub, alice, run_dir):
    push_run(run_dir, "alice-lab/team-lora")
    assert hub.repo("alice-lab/team-lora").private is True


def test_push_dataset_imagefolder(hub, alice, tmp_path):
    ds = build_dataset(tmp_path / "datasets" / "me")
    res = push_dataset(ds, "alice/me-photos")
    repo = hub.repo("alice/me-photos", "dataset")
    assert repo.private is True and res.repo_type == "dataset"
    assert set(repo.files) == {"README.md", "dataset.json", "images/metadata.jsonl",
                               "images/0001.png", "images/0002.png", "images/0003.png"}
    assert not any(p.startswith("originals") for p in repo.files)
    meta = card_meta(hub, "alice/me-photos", "dataset")
    assert "text-to-image" in meta["task_categories"]
    # The uploaded layout loads as an imagefolder dataset.
    import datasets

    out = tmp_path / "dl" / "images"
    out.mkdir(parents=True)
    for p, data in repo.files.items():
        if p.startswith("images/"):
            (out / p.split("/", 1)[1]).write_bytes(data)
    dset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(dset) == 3 and dset[0]["text"].startswith(INSTANCE_PROMPT)


# ---- errors: one sentence, no token, nothing local lost -------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _one_sentence(msg: str) -> None:
    assert "\n" not in msg and msg.endswith(".") and len(msg) < 300
    assert "Traceback" not in msg


@pytest.mark.parametrize("case", ["missing", "invalid", "read_only", "foreign_namespace",
                                  "no_write_access", "taken_by_other", "no_network",
                                  "invalid_repo_id", "offline"])
def test_push_errors_are_one_sentence(case, hub, run_dir, monkeypatch):
    import huggingface_hub.constants as c

    tok = new_token()
    repo_id = "bob/me-lora"
    if case == "invalid":
        monkeypatch.setenv("HF_TOKEN", tok)  # unknown to the Hub
    elif case == "read_only":
        hub.add_token(tok, "bob", role="read")
    elif case == "foreign_namespace":
        hub.add_token(tok, "bob")
        repo_id = "carol/me-lora"
    elif case == "no_write_access":
        hub.add_token(tok, "bob", role="fineGrained", can_write=False)
    elif case == "taken_by_other":
        hub.add_token(tok, "bob", orgs=["shared"])
        other = new_token()
        hub.add_token(other, "carol", orgs=["shared"])
        push_run(run_dir, "shared/me-lora", token=other)
        hub.state.tokens[tok].can_write = False  # bob may read the org but not write to it
        repo_id = "shared/me-lora"
    elif case == "no_network":
        hub.add_token(tok, "bob")
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    elif case == "invalid_repo_id":
        hub.add_token(tok, "bob")
        repo_id = "bob/../../etc"
    elif case == "offline":
        hub.add_token(tok, "bob")
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    if case not in ("missing", "invalid"):
        monkeypatch.setenv("HF_TOKEN", tok)
    before = _snapshot(run_dir)
    with pytest.raises(ShareError) as ei:
        push_run(run_dir, repo_id, token=None)
    msg = str(ei.value)
    _one_sentence(msg)
    assert tok not in msg and ei.value.__cause__ is None
    expected = {"missing": "No Hugging Face token", "invalid": "rejected",
                "read_only": "read-only", "foreign_namespace": "not your account",
                "no_write_access": "may not", "taken_by_other": "may not",
                "no_network": "Could not reach", "invalid_repo_id": "Invalid repo id",
                "offline": "HF_HUB_OFFLINE"}[case]
    assert expected in msg
    assert _snapshot(run_dir) == before  # nothing local changed or lost
    if case in ("read_only", "foreign_namespace", "invalid", "missing", "invalid_repo_id"):
        assert hub.repo(repo_id) is None  # nothing created


def test_push_errors_for_bad_runs(hub, alice, run_dir, tmp_path):
    with pytest.raises(ShareError, match="no complete checkpoint at step 3"):
        push_run(run_dir, "alice/x", checkpoint=3)
    (run_dir / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(ShareError, match=r"no final LoRA.*--checkpoint 4"):
        push_run(run_dir, "alice/x")
    with pytest.raises(ShareError, match="does not exist"):
        push_run(tmp_path / "nope", "alice/x")
    assert not hub.state.requests  # all refused before any network call


def test_token_never_leaks(hub, run_dir, monkeypatch, caplog, capfd, home, workspace):
    """Grep every log, event file, output and page text produced during pushes for the token."""
    import gradio as gr

    from studio.cli import main
    from studio.ui import share_tab
    from studio.ui.context import AppContext

    tok = new_token()
    hub.add_token(tok, "alice")
    caplog.set_level(logging.DEBUG)
    page: list[str] = []
    ctx = AppContext(workspace=workspace)
    # 1. The UI path, token typed in the page (not in the environment).
    out = share_tab.on_push(ctx, "me-lora", share_tab.FINAL, "alice/ui-lora", True, tok,
                            progress=None)
    page.extend(str(o) for o in out)
    assert "alice/ui-lora" in out[0] and hub.repo("alice/ui-lora").private
    # ... a failing UI push with that token (read-only repo namespace) must not echo it either.
    out = share_tab.on_push(ctx, "me-lora", share_tab.FINAL, "carol/x", True, tok, progress=None)
    page.extend(str(o) for o in out)
    assert "⚠️" in out[0]
    out = share_tab.on_push_dataset(ctx, "", "alice/d", True, tok, progress=None)
    page.extend(str(o) for o in out)
    # 2. The CLI path, token from HF_TOKEN.
    monkeypatch.setenv("HF_TOKEN", tok)
    assert main(["--debug", "push", str(run_dir), "--repo", "alice/cli-lora", "--public"]) == 0
    assert main(["push", str(run_dir), "--repo", "zed/cli-lora"]) == 2
    assert hub.repo("alice/cli-lora").private is False
    captured = capfd.readouterr()
    texts = {"stdout": captured.out, "stderr": captured.err,
             "logs": "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
             "page": "\n".join(page)}
    assert "Created" in captured.out and "error:" in captured.err
    for f in home.rglob("*"):
        if f.is_file():
            texts[str(f)] = f.read_bytes().decode("latin-1")
    for (_rtype, rid), repo in hub.state.repos.items():
        for p, data in repo.files.items():
            texts[f"hub:{rid}/{p}"] = data.decode("latin-1")
    assert len(texts) > 10
    for where, text in texts.items():
        assert tok not in text, f"token leaked into {where}"
    assert isinstance(gr.__version__, str)


# ---- bundle -----------------------------------------------------------------------------------
def test_bundle_zip_and_cli(run_dir, tmp_path, home):
    from studio.cli import main
    from studio.share.bundle import export_run_bundle

    out = export_run_bundle(run_dir, tmp_path / "b.zip")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert names == {f"me-lora/{n}" for n in (
            "README.md", "config.yaml", "manifest.json", "pytorch_lora_weights.safetensors",
            "lora_kohya.safetensors", "samples/step-000004/0.png", "samples/step-000004/1.png")}
        from huggingface_hub import ModelCard

        meta = ModelCard(zf.read("me-lora/README.md").decode()).data.to_dict()
        assert meta["instance_prompt"] == INSTANCE_PROMPT
        assert zf.read("me-lora/pytorch_lora_weights.safetensors") == \
            (run_dir / "pytorch_lora_weights.safetensors").read_bytes()
        assert_sdxl_kohya(zf.read("me-lora/lora_kohya.safetensors"), alpha=ALPHA)
    assert main(["bundle", str(run_dir), "--out", str(tmp_path / "c.zip"), "--checkpoint", "2"]) == 0
    with zipfile.ZipFile(tmp_path / "c.zip") as zf:
        assert_sdxl_kohya(zf.read("me-lora-step000002/lora_kohya.safetensors"), alpha=ALPHA)
        assert zf.read("me-lora-step000002/pytorch_lora_weights.safetensors") == (
            run_dir / "checkpoints/checkpoint-000002/pytorch_lora_weights.safetensors").read_bytes()
    # A failure leaves no partial zip behind (atomic write) and says one sentence.
    assert main(["bundle", str(run_dir), "--out", str(tmp_path / "d.zip"), "--checkpoint", "9"]) == 2
    assert not (tmp_path / "d.zip").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.zip")]
    with pytest.raises(ShareError, match=r"\.zip"):
        export_run_bundle(run_dir, tmp_path / "e.tar")
    assert zipfile.is_zipfile(io.BytesIO(out.read_bytes()))


# ---- load from the Hub and generate ----------------------------------------------------------
@pytest.fixture(scope="module")
def generator(tiny_models):
    """One tiny-base Generator for the module (the base loads once; LoRAs switch as adapters)."""
    from studio.generate.engine import Generator

    return Generator(base=str(tiny_models["base"]), vae="base")


def test_hub_lora_is_downloaded_once_and_used_in_generation(hub, alice, run_dir, generator,
                                                            monkeypatch):
    import huggingface_hub.constants as c
    import numpy as np

    from studio.generate.request import GenerationRequest
    from studio.lora.refs import resolve_lora
    from studio.models import ModelLoadError

    push_run(run_dir, "alice/me-lora")  # private: the download needs the token
    ref = resolve_lora("alice/me-lora")
    assert ref.weight_name == "pytorch_lora_weights.safetensors"
    assert (ref.path / ref.weight_name).read_bytes() == \
        (run_dir / "pytorch_lora_weights.safetensors").read_bytes()
    assert str(ref.path).startswith(str(c.HF_HUB_CACHE))
    kref = resolve_lora("alice/me-lora:lora_kohya.safetensors")
    assert kref.weight_name == "lora_kohya.safetensors"
    downloads = [r for r in hub.state.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(downloads) == 2
    # Second time: from the cache, even offline.
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert resolve_lora("alice/me-lora").path == ref.path
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    downloads2 = [r for r in hub.state.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(downloads2) == 2

    gen = generator
    req = dict(prompt=INSTANCE_PROMPT, steps=2, width=64, height=64, seed=3, guidance=5.0)
    plain = np.asarray(gen.generate(GenerationRequest(**req))[0].image, dtype=np.int16)
    res = gen.generate(GenerationRequest(**req, lora="alice/me-lora"))[0]
    with_lora = np.asarray(res.image, dtype=np.int16)
    assert res.params["lora"] == "alice/me-lora"
    assert np.abs(plain - with_lora).mean() > 1.0
    # Diffusers and Kohya files from the Hub give the same image (the Kohya alpha is right).
    kohya = np.asarray(gen.generate(GenerationRequest(
        **req, lora="alice/me-lora:lora_kohya.safetensors"))[0].image, dtype=np.int16)
    assert np.abs(kohya - with_lora).max() <= 2

    # Errors are one sentence.
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelLoadError, match="not found on the Hub, or it is private") as ei:
        resolve_lora("alice/other")
    _one_sentence(str(ei.value))
    with pytest.raises(ModelLoadError, match="not found in the Hub repo"):
        push_run(run_dir, "alice/pub", private=False, token=alice)
        resolve_lora("alice/pub:missing.safetensors")
    with pytest.raises(ModelLoadError, match=r"\.safetensors file"):
        resolve_lora("alice/pub:weights.bin")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ModelLoadError, match="Could not download"):
        resolve_lora("alice/never-cached")


def test_checkpoint_kohya_conversion_matches_diffusers(run_dir, generator, tmp_path):
    import numpy as np

    from studio.generate.request import GenerationRequest
    from studio.lora.kohya import write_kohya

    src = run_dir / "checkpoints/checkpoint-000002/pytorch_lora_weights.safetensors"
    dst = write_kohya(src, tmp_path / "k" / "ck2_kohya.safetensors")  # alpha from the metadata
    assert_sdxl_kohya(dst, alpha=ALPHA)
    gen = generator
    req = dict(prompt=INSTANCE_PROMPT, steps=2, width=64, height=64, seed=5)
    a = np.asarray(gen.generate(GenerationRequest(**req, lora=str(src)))[0].image, dtype=np.int16)
    b = np.asarray(gen.generate(GenerationRequest(**req, lora=str(dst)))[0].image, dtype=np.int16)
    assert np.abs(a - b).max() <= 2


def test_share_tab_in_app_and_generate_accepts_hub_ids(workspace, run_dir):
    """The Share tab is the last tab; its pickers list the run and its checkpoints; the Generate
    tab's LoRA field takes custom values (Hub ids go through resolve_lora)."""
    from studio.ui import app, generate_tab, share_tab
    from studio.ui.context import AppContext

    assert app.TAB_MODULES[-1] is share_tab
    ctx = AppContext(workspace=workspace)
    demo = app.build_app(ctx)
    assert any(getattr(b, "elem_id", None) == "share-push" for b in demo.blocks.values())
    lora = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "gen-lora")
    assert lora.allow_custom_value
    assert share_tab.checkpoint_choices(ctx, "me-lora") == [share_tab.FINAL, "checkpoint 4",
                                                           "checkpoint 2"]
    token_box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "share-token")
    assert token_box.type == "password"
    path, msg = share_tab.on_bundle(ctx, "me-lora", "checkpoint 2")
    assert path and path.endswith(".zip") and msg.startswith("✅")
    assert share_tab.on_bundle(ctx, "../etc", None)[1].startswith("⚠️")
    assert generate_tab.NO_LORA
