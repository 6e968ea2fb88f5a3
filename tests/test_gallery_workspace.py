"""Gallery PNG metadata and export; workspace paths and registry."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from PIL import Image

from studio.generate.gallery import Gallery, a1111_parameters, read_params
from studio.workspace import Workspace, WorkspaceError, safe_join, safe_name

PARAMS = {"prompt": "a photo of TOK person, smiling", "negative_prompt": "blurry", "seed": 42,
          "steps": 30, "guidance": 6.0, "scheduler": "DPM++ 2M Karras", "width": 1024,
          "height": 1024, "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
          "lora": "/runs/me/pytorch_lora_weights.safetensors", "lora_scale": 0.8}


def test_a1111_text():
    text = a1111_parameters(PARAMS)
    lines = text.splitlines()
    assert lines[0] == PARAMS["prompt"]
    assert lines[1] == "Negative prompt: blurry"
    assert "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.0, Seed: 42, Size: 1024x1024" in lines[2]
    assert 'Lora: "/runs/me/pytorch_lora_weights.safetensors:0.8"' in lines[2]


def test_gallery_roundtrip_and_export(tmp_path):
    g = Gallery(tmp_path / "gallery")
    paths = [g.add(Image.new("RGB", (16, 16), c), {**PARAMS, "seed": i})
             for i, c in enumerate(["red", "blue"])]
    assert read_params(paths[0])["seed"] == 0
    assert {it.params["seed"] for it in g.items()} == {0, 1}
    z = g.export_zip(tmp_path / "out.zip")
    with zipfile.ZipFile(z) as zf:
        names = zf.namelist()
        assert sorted(n for n in names if n.startswith("images/")) == \
            sorted(f"images/{p.name}" for p in paths)
        rows = list(csv.DictReader(io.StringIO(zf.read("metadata.csv").decode())))
        assert {r["seed"] for r in rows} == {"0", "1"}
        jl = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        assert all(r["prompt"] == PARAMS["prompt"] for r in jl)


def test_export_empty_gallery_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Gallery(tmp_path / "g").export_zip(tmp_path / "x.zip")


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "/etc", ".hidden", "a" * 81, "x\x00y"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(WorkspaceError):
        safe_name(bad)


def test_safe_join_refuses_escape(tmp_path):
    assert safe_join(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    for parts in [("..",), ("a", "..", ".."), ("/etc/passwd",)]:
        with pytest.raises(WorkspaceError):
            safe_join(tmp_path, *parts)


def test_registry_survives_reopen(tmp_path):
    ws = Workspace(tmp_path / "home")
    d = ws.dataset_path("me")
    d.mkdir()
    ws.register_dataset("me", d, {"trigger": "TOK"})
    again = Workspace(tmp_path / "home")
    assert [x["name"] for x in again.registered("datasets")] == ["me"]
    assert again.registered("datasets")[0]["info"]["trigger"] == "TOK"
    for sub in ("datasets", "runs", "gallery", "exports", "models", "tmp"):
        assert (again.home / sub).is_dir()
