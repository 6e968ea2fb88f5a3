"""The hand-offs between the Dataset, Generate and Share tabs without a browser: run names as
LoRAs, lists filled on page load, caption editor and table in sync, deleting through the
owners, reusing an image's settings."""

from __future__ import annotations

import subprocess
import sys

import dataset_photos as dp
import gradio as gr
import pytest
from PIL import Image

from studio.dataset import DatasetError, store
from studio.generate.gallery import Gallery, GalleryError, read_params
from studio.lora.refs import NoSuchRunError, resolve_lora, run_loras
from studio.share.hub import ShareError, check_repo_id
from studio.ui import dataset_captions as dc
from studio.ui import dataset_tab, share_tab
from studio.ui import generate_gallery as gg
from studio.ui.app import build_app
from studio.ui.context import AppContext
from studio.ui.train_view import dataset_choices

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def make_run(workspace, name: str, lora: bool = True):
    run = workspace.runs_dir / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("config_version: 1\n")
    if lora:
        (run / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    return run


# ---- broken point 3: a name without "/" is a run, never a Hub id ------------------------------
def test_unknown_run_name_lists_the_runs_instead_of_blaming_the_network(workspace):
    with pytest.raises(NoSuchRunError, match="no run has a LoRA yet"):
        resolve_lora("no-such-run", workspace)
    make_run(workspace, "alice-v1")
    make_run(workspace, "unfinished", lora=False)
    with pytest.raises(NoSuchRunError) as err:
        resolve_lora("no-such-run", workspace)
    msg = str(err.value)
    assert "No trained run is named 'no-such-run'" in msg and "alice-v1" in msg
    assert "unfinished" not in msg and "download" not in msg and msg.count(".") <= 2
    ref = resolve_lora("alice-v1", workspace)
    assert ref.label == "alice-v1" and ref.path == workspace.runs_dir / "alice-v1"
    assert list(run_loras(workspace)) == ["alice-v1"]


def test_cli_generate_with_an_unknown_run_name_is_one_sentence(home, tiny_models, workspace):
    make_run(workspace, "alice-v1")
    res = subprocess.run([sys.executable, "-m", "studio", "generate", "--base",
                          str(tiny_models["base"]), "--prompt", "x", "--out", str(home / "o"),
                          "--lora", "no-such-run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "STUDIO_HOME": str(home)})
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "No trained run is named 'no-such-run'" in err
    assert "alice-v1" in err


def test_ui_generation_with_an_unknown_run_name_lists_the_runs(workspace, tmp_path):
    from studio.ui.generate_tab import run_generation

    make_run(workspace, "alice-v1")
    ctx = AppContext(workspace=workspace, base="unused", refiner="unused", captioner="unused")
    _, status = run_generation(ctx, Gallery(tmp_path / "g"), "a photo", "", "no-such-run", 1.0,
                               "Euler", 2, 5.0, 64, 64, 1, 1, False, 0.8)
    assert "No trained run is named 'no-such-run'" in status and "alice-v1" in status


# ---- broken points 2 and 6: lists filled on page load ----------------------------------------
def _load_targets(demo: gr.Blocks) -> set[str]:
    """elem_ids of the components some page-load event writes."""
    by_id = {b._id: getattr(b, "elem_id", None) for b in demo.blocks.values()}
    out = set()
    for dep in demo.config["dependencies"]:
        if any(t[1] == "load" for t in dep["targets"]):
            out.update(by_id.get(o) for o in dep["outputs"])
    return out


def test_every_workspace_list_of_the_three_tabs_is_filled_on_page_load(workspace):
    ctx = AppContext(workspace=workspace, base="unused", refiner="unused", captioner="unused")
    demo = build_app(ctx)
    targets = _load_targets(demo)
    for elem in ("ds-existing", "gen-lora", "gen-gallery", "share-run", "share-checkpoint",
                 "share-dataset"):
        assert elem in targets, elem


def test_lists_read_the_disk_each_time(workspace):
    """What the page-load (and tab-open) events return: runs and images made after start."""
    ctx = AppContext(workspace=workspace, base="unused", refiner="unused", captioner="unused")
    comps: dict = {}
    with gr.Blocks():
        with gr.Tabs():
            from studio.ui import generate_tab
            comps["generate"] = generate_tab.build(ctx)
            comps["share"] = share_tab.build(ctx)
    make_run(workspace, "alice-v1")
    Gallery(workspace.gallery_dir).add(Image.new("RGB", (8, 8)), {"prompt": "p", "seed": 1})
    images, lora = comps["generate"]["lists"]()
    assert len(images) == 1
    assert ("alice-v1", str(workspace.runs_dir / "alice-v1" / "pytorch_lora_weights.safetensors")
            ) in lora["choices"]
    run, ckpt, _ = comps["share"]["lists"](None)
    assert run["choices"] == ["alice-v1"] and run["value"] == "alice-v1"


# ---- broken point 9: num_images recorded, an empty repo id --------------------------------------
def test_a_two_image_request_records_num_images_2(tiny_models, tmp_path, workspace):
    from studio.ui.generate_tab import run_generation

    ctx = AppContext(workspace=workspace, base=str(tiny_models["base"]),
                     refiner=str(tiny_models["refiner"]), captioner="unused")
    gallery = Gallery(tmp_path / "g")
    _, status = run_generation(ctx, gallery, "a photo of TOK person", "", "(none)", 1.0,
                               "Euler", 2, 5.0, 64, 64, 7, 2, False, 0.8)
    assert status.startswith("Done: 2 image(s)"), status
    params = [it.params for it in gallery.items()]
    assert sorted(p["seed"] for p in params) == [7, 8]
    assert [p["num_images"] for p in params] == [2, 2]


def test_an_empty_hub_repo_id_asks_for_one(workspace):
    with pytest.raises(ShareError, match="^Enter a Hub repo id such as your-name/my-lora.$"):
        check_repo_id("  ")
    ctx = AppContext(workspace=workspace, base="unused", refiner="unused", captioner="unused")
    make_run(workspace, "alice-v1")
    msg, url = share_tab.on_push(ctx, "alice-v1", None, "", True, None)
    assert msg == "⚠️ Enter a Hub repo id such as your-name/my-lora." and url == ""


# ---- broken point 5: the caption editor and the table -----------------------------------------
ROWS = [[f"000{i}.png", f"IMG_{i}.jpg", f"a photo of TOK person, look {i}", "yes"]
        for i in range(1, 9)]


def test_replace_all_counts_the_captions_that_changed():
    rows = [list(r) for r in ROWS]
    rows[6][2] = rows[7][2] = "a photo of TOK man"
    out, msg = dc.bulk(rows, "replace", "person", "human")
    assert msg.startswith("Edited 6 caption(s)"), msg
    assert sum("human" in r[2] for r in out) == 6
    assert dc.bulk(out, "replace", "nowhere", "x")[1] == "No caption changed."


def test_the_editor_never_shows_a_stale_caption_after_a_table_edit():
    rows = [list(r) for r in ROWS]
    idx, _, _, shown = dc.show_row(None, rows, 1)
    assert idx == 1 and shown == rows[1][2]
    rows[1][2] = "typed into the table"  # the user edits the same row in the table
    *editor, status = dc.table_edited(None, rows, idx)
    assert editor[3] == "typed into the table"  # the box shows the table's caption again
    assert "Caption of" not in status
    # Apply with the box as it is now shown keeps the table edit (nothing to overwrite).
    table, msg = dc.apply_caption(rows, idx, editor[3])
    assert "unchanged" in msg and not isinstance(table, list)  # the table is left as it is
    assert rows[1][2] == "typed into the table"


def test_apply_message_gives_way_after_another_row_is_edited():
    rows = [list(r) for r in ROWS]
    rows, msg = dc.apply_caption(rows, 1, "new caption of two")
    assert msg.startswith("Caption of 0002.png changed")
    rows[2][2] = "typed for three"
    *_, status = dc.table_edited(None, rows, 1)
    assert "0002.png" not in status


def test_previous_next_apply_the_edit_first_and_wrap(tmp_path):
    rows = [list(r) for r in ROWS[:3]]
    out, idx, _, title, caption, status = dc.step(None, rows, 2, "edited three", +1)
    assert out[2][2] == "edited three" and idx == 0 and caption == rows[0][2]
    assert "0001.png" in title and "image 1 of 3" in title
    assert status.startswith("Applied the caption of 0003.png")
    out, idx, *_ = dc.step(None, out, 0, out[0][2], -1)
    assert idx == 2


def test_the_editor_shows_the_crop_of_the_row(workspace, tiny_models, tmp_path):
    ctx = AppContext(workspace=workspace, captioner=str(tiny_models["captioner"]))
    files = [str(dp.save(im, tmp_path / n)) for n, im in list(dp.good_variants().items())[:2]]
    path, _, rows, _, _ = dataset_tab.process(ctx, files, "TOK", "person",
                                              dataset_tab.cap.DEFAULT_TEMPLATE, "close-up",
                                              "haar", "keep")
    idx, image, title, caption = dc.show_row(path, rows, 1)
    assert idx == 1 and image.size == (dc.PREVIEW, dc.PREVIEW) and caption == rows[1][2]

    # Save: the saved name is the Train tab's value for that dataset; Open gives it as well.
    h = dataset_tab._Handlers(ctx)
    new, _, status, saved, button = h.save(path, "my set", rows)
    assert status.startswith("✅") and button["interactive"] is True
    assert saved in [value for _, value in dataset_choices(ctx)]
    assert h.open("my-set")[-2] == saved


# ---- deleting through the owners ---------------------------------------------------------------
def _dataset(workspace, name: str):
    entries = [store.Entry("0001.png", Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8)), "c")]
    return store.write_dataset(workspace.dataset_path(name), entries, {"name": name}, {},
                               workspace=workspace)


def test_delete_a_dataset_only_by_a_listed_name_and_not_while_training_uses_it(workspace,
                                                                               tmp_path):
    ds = _dataset(workspace, "keep-me")
    _dataset(workspace, "drop-me")
    outside = tmp_path / "outside"
    store.write_dataset(outside, [], {"name": "outside"}, {}, workspace=workspace)
    for bad in ("../keep-me", str(ds.path), "nope"):
        with pytest.raises(DatasetError, match="no dataset named"):
            store.delete_dataset(workspace, bad)
    with pytest.raises(DatasetError, match="outside the workspace"):
        store.delete_dataset(workspace, "outside")
    with pytest.raises(DatasetError, match="queued or running training"):
        store.delete_dataset(workspace, "keep-me", in_use=[str(ds.path)])
    store.delete_dataset(workspace, "drop-me")
    assert [d["name"] for d in store.list_datasets(workspace)] == ["outside", "keep-me"] or \
        {d["name"] for d in store.list_datasets(workspace)} == {"outside", "keep-me"}
    assert not list(workspace.datasets_dir.glob("*drop-me*")) and outside.is_dir()


def test_dataset_tab_delete_clears_the_editor_of_the_deleted_dataset(workspace):
    ds = _dataset(workspace, "drop-me")
    ctx = AppContext(workspace=workspace, base="unused", refiner="unused", captioner="unused")
    assert dataset_tab.ask_delete(None)[0] is None
    target, question = dataset_tab.ask_delete("drop-me")
    assert target == "drop-me" and "cannot be undone" in question
    choices, current, gallery, table, saved, button, status = dataset_tab.delete_dataset(
        ctx, target, str(ds.path))
    assert choices["choices"] == [] and current is None and table == [] and saved is None
    assert button["interactive"] is False and "Deleted the dataset drop-me" in status


def test_gallery_delete_takes_only_names_it_lists(tmp_path):
    g = Gallery(tmp_path / "g")
    a = g.add(Image.new("RGB", (8, 8)), {"prompt": "a", "seed": 1})
    (tmp_path / "secret.png").write_bytes(b"x")
    for bad in ("../secret.png", str(a), "nope.png"):
        with pytest.raises(GalleryError):
            g.delete([bad])
    with pytest.raises(GalleryError, match="Select an image"):
        g.delete([])
    assert (tmp_path / "secret.png").exists()
    images, selected, meta, status = gg.delete_images(g, [a.name])
    assert images == [] and selected is None and status == "Deleted 1 image(s)."
    assert not a.exists()


# ---- "Reuse this image's settings" --------------------------------------------------------------
def test_reuse_fills_every_setting_from_the_image(tmp_path):
    g = Gallery(tmp_path / "g")
    params = {"prompt": "a photo of TOK person, hat", "negative_prompt": "blurry", "seed": 42,
              "lora": "alice-v1", "lora_scale": 0.75, "scheduler": "Euler a", "steps": 12,
              "guidance": 4.5, "width": 832, "height": 1216, "refiner": "some/refiner",
              "refiner_switch": 0.7, "num_images": 2}
    name = g.add(Image.new("RGB", (8, 8)), params).name
    assert read_params(g.folder / name)["seed"] == 42
    *values, status = gg.reuse_settings(g, name)
    got = dict(zip(gg.REUSED, values, strict=True))
    assert got == {"prompt": "a photo of TOK person, hat", "negative": "blurry", "seed": 42,
                   "lora": "alice-v1", "lora_scale": 0.75, "scheduler": "Euler a", "steps": 12,
                   "guidance": 4.5, "width": 832, "height": 1216, "use_refiner": True,
                   "refiner_switch": 0.7}
    assert "seed 42" in status
    plain = g.add(Image.new("RGB", (8, 8)), {**params, "lora": None, "refiner": None}).name
    got = dict(zip(gg.REUSED, gg.reuse_settings(g, plain)[:-1], strict=True))
    assert got["lora"] == gg.NO_LORA and got["use_refiner"] is False
    assert gg.reuse_settings(g, None)[-1].startswith("⚠️ Select an image")
