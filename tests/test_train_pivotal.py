"""Pivotal tuning on the tiny models: only the new token rows train, for the configured fraction
of the steps; the run writes embeddings.safetensors (checkpoints too), records the mapping, and
Generate loads the embeddings with the LoRA and maps the trigger."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from _train_support import fast_overrides, make_dataset
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from studio.config import load_config
from studio.generate.engine import Generator
from studio.generate.request import GenerationRequest
from studio.lora.embeddings import read_embeddings
from studio.runs.export import export_checkpoint
from studio.runs.folder import RunFolder
from studio.share.runfiles import collect_run_files
from studio.train import pivotal
from studio.train.loop import Trainer

STEPS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    """A 4-step pivotal run (embeddings train for half of the steps), a checkpoint every step."""
    root = tmp_path_factory.mktemp("pivotal")
    ds = make_dataset(root / "ds", n=2)
    cfg = load_config(overrides=fast_overrides(root / "run", ds, tiny_models["base"], STEPS) + [
        "lora.train_text_embeddings=true", "train.text_embeddings_lr=5e-2",
        "train.text_embeddings_frac=0.5", "checkpoints.every_n_steps=1",
        "checkpoints.total_limit=", "validation.at_end=true"])
    trainer = Trainer(cfg)
    assert trainer.run().status == "finished"
    return trainer


def test_only_the_new_rows_train_and_the_file_has_clip_l_and_clip_g(run, tiny_models):
    folder = RunFolder(run.run_dir)
    emb = read_embeddings(folder.embeddings_path)
    assert emb.trigger == "tok" and emb.tokens == ["<s0>", "<s1>"]
    assert emb.tensors["clip_l"].shape == (2, 32) and emb.tensors["clip_g"].shape == (2, 32)
    base = tiny_models["base"]
    fresh = [CLIPTextModel.from_pretrained(base, subfolder="text_encoder"),
             CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2")]
    trained = [run.acc.unwrap_model(te) for te in run.m.text_encoders]
    for key, new, old, tok in zip(("clip_l", "clip_g"), trained, fresh, run.m.tokenizers,
                                  strict=True):
        assert torch.equal(pivotal.base_rows(new).cpu(), old.get_input_embeddings().weight)
        ids = tok.convert_tokens_to_ids(["<s0>", "<s1>"])
        gen = torch.Generator().manual_seed(run.cfg.train.seed)
        assert not torch.equal(emb.tensors[key], old.get_input_embeddings().weight[ids])
        std = old.get_input_embeddings().weight.float().std()
        if key == "clip_l":  # the first draw of the seeded generator is clip_l's start
            start = torch.randn((2, 32), generator=gen) * std
            assert not torch.allclose(emb.tensors[key], start)  # the rows trained
    manifest = folder.manifest()
    assert RunFolder.EMBEDDINGS in manifest["files"]
    assert manifest["lora"]["new_tokens"] == ["<s0>", "<s1>"] and manifest["trigger"] == "tok"
    card = folder.card_path.read_text(encoding="utf-8")
    assert "embedding:embeddings" in card and "`<s0><s1>`" in card
    samples = [e for e in folder.events() if e["type"] == "sample"]
    assert samples and all("tok" in e["prompt"] for e in samples)  # recorded as written


def test_embeddings_stop_changing_after_the_fraction(run):
    ckpts = RunFolder(run.run_dir).checkpoints()
    assert [c.step for c in ckpts] == [1, 2, 3, 4]
    rows = [load_file(str(c.path / RunFolder.EMBEDDINGS)) for c in ckpts]
    for k in ("clip_l", "clip_g"):
        assert not torch.equal(rows[0][k], rows[1][k])  # step 2 still trains
        assert torch.equal(rows[1][k], rows[2][k]) and torch.equal(rows[2][k], rows[3][k])
    unet = [load_file(str(c.lora_path)) for c in ckpts[2:]]  # while the LoRA keeps training
    assert any(not torch.equal(unet[0][k], unet[1][k]) for k in unet[0])


def test_prompts_map_the_whole_trigger_word_only(run):
    piv = run.pivotal
    assert piv.apply("a photo of tok person, tokyo") == "a photo of <s0><s1> person, tokyo"
    assert piv.apply(piv.apply("tok")) == "<s0><s1>"


def test_export_push_and_bundle_carry_the_embeddings(run, tmp_path):
    src = tmp_path / "run"
    shutil.copytree(run.run_dir, src)
    folder = RunFolder(src)
    export_checkpoint(src, 1)
    assert folder.embeddings_path.read_bytes() == \
        (folder.checkpoint(1).path / RunFolder.EMBEDDINGS).read_bytes()
    assert RunFolder.EMBEDDINGS in folder.manifest()["files"]
    for ck in (None, 2):
        rf = collect_run_files(src, ck)
        try:
            assert RunFolder.EMBEDDINGS in rf.files
        finally:
            rf.cleanup()


def _pixels(gen: Generator, lora: str) -> np.ndarray:
    req = GenerationRequest(prompt="a photo of tok person", seed=3, steps=2, width=64, height=64,
                            lora=lora)
    out = gen.generate(req)[0]
    return np.asarray(out.image).astype(np.int16), out.params


def test_generate_loads_the_embeddings_and_maps_the_trigger(run, tiny_models, tmp_path):
    gen = Generator(base=str(tiny_models["base"]), device="cpu")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(RunFolder(run.run_dir).lora_path, plain)
    with_emb, params = _pixels(gen, str(run.run_dir))
    assert params["embeddings"] == {"file": RunFolder.EMBEDDINGS, "trigger": "tok",
                                    "tokens": "<s0><s1>"}
    without, params2 = _pixels(gen, str(plain))
    assert params2["embeddings"] is None
    assert np.abs(with_emb - without).max() > 0
    again, _ = _pixels(Generator(base=str(tiny_models["base"]), device="cpu"), str(run.run_dir))
    assert np.array_equal(again, with_emb)  # loading twice neither fails nor changes the image


def test_presets_use_the_likeness_techniques():
    piv = load_config(preset="portrait-pivotal")
    assert piv.lora.train_text_embeddings and piv.lora.num_new_tokens == 2
    assert piv.data.mask_weight == 0.3 and piv.train.optimizer == "prodigy"
    assert piv.train.learning_rate == 1.0 and not piv.data.buckets
    assert load_config(preset="style").data.buckets and load_config(preset="object").data.buckets
    for square in ("portrait", "portrait-quality"):
        assert not load_config(preset=square).data.buckets


def test_bench_likeness_tiny_runs():
    import json
    import subprocess
    import sys

    from _train_support import ROOT, env

    r = subprocess.run([sys.executable, "benchmarks/bench_likeness.py", "--tiny", "--steps", "1",
                        "--warmup", "0", "--variants", "portrait", "portrait-pivotal"], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert [x["variant"] for x in report["results"]] == ["portrait", "portrait-pivotal"]
    assert all(x["status"] == "finished" and x["cpu_s_per_step"] > 0 for x in report["results"])


def test_the_loader_self_test_covers_the_embeddings_file(run, tiny_models, tmp_path):
    """The final manifest, export and share checks include embeddings.safetensors; a file made
    for another base (wrong width) fails, naming the tensor, and is refused by push and bundle."""
    from safetensors.torch import save_file

    from studio.lora.verify import verify_lora
    from studio.share.runfiles import ShareError

    folder = RunFolder(run.run_dir)
    check = folder.manifest()["lora_check"][RunFolder.EMBEDDINGS]
    assert check["ok"] and check["layout"] == "embeddings"
    assert "2 token embedding(s), clip_l 32 and clip_g 32 wide" in check["summary"]
    assert verify_lora(folder.embeddings_path, tiny_models["base"]).ok
    src = tmp_path / "run"
    shutil.copytree(run.run_dir, src)
    emb = load_file(str(src / RunFolder.EMBEDDINGS))
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": emb["clip_g"]},
              str(src / RunFolder.EMBEDDINGS))
    report = verify_lora(src / RunFolder.EMBEDDINGS, tiny_models["base"])
    assert not report.ok and "clip_l is 768 wide" in report.summary()
    with pytest.raises(ShareError, match="clip_l is 768 wide"):
        collect_run_files(src, None)
