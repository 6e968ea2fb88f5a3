"""Dataset tab handlers without a browser: process, bulk edits, save, re-open."""

from __future__ import annotations

import dataset_photos as dp

from studio.dataset import store
from studio.ui import dataset_tab as tab
from studio.ui import train_tab
from studio.ui.context import AppContext


def test_process_edit_save_reopen(workspace, tiny_models, tmp_path):
    ctx = AppContext(workspace=workspace, captioner=str(tiny_models["captioner"]))
    files = [str(dp.save(im, tmp_path / n)) for n, im in list(dp.good_variants().items())[:2]]
    (tmp_path / "empty.jpg").write_bytes(b"")
    files.append(str(tmp_path / "empty.jpg"))
    path, gallery, rows, report, status = tab.process(ctx, files, "TOK", "person",
                                                      "a photo of {trigger} {class_word}, {caption}",
                                                      "close-up", "haar", "keep")
    assert path and "2 image(s) ready, 1 not used" in status
    assert len(gallery) == 2 and gallery[0][0].size == (2 * tab.THUMB + 8, tab.THUMB)
    assert "empty.jpg: empty file" in report
    rows, _ = tab.bulk(rows, "suffix", "studio lighting")
    rows, _ = tab.bulk(rows, "replace", "studio", "soft")
    assert all(r[2].endswith(", soft lighting") for r in rows)
    rows[1][3] = "no"  # drop the second image
    assert "trigger 'TOK' is missing" in tab.lint_markdown([["a", "", "no trigger person", "yes"]],
                                                            "TOK", "person")
    new_path, _, msg = tab.save(ctx, path, "First set", rows)
    assert msg.startswith("✅ Saved 1 image(s)"), msg
    ds = store.open_dataset(new_path)
    assert ds.path.name == "First-set" and ds.info["name"] == "First-set"
    assert ds.entries[0]["text"].endswith(", soft lighting")
    # The same name again is refused, nothing is lost.
    path2, _, rows2, _, _ = tab.process(ctx, files[:1], "TOK", "person", tab.cap.DEFAULT_TEMPLATE,
                                        "close-up", "haar", "keep")
    _, _, msg2 = tab.save(ctx, path2, "First-set", rows2)
    assert "already exists" in msg2
    # Re-opening lists and loads it; the Train tab lists it too (one dataset list).
    assert "First-set" in [d["name"] for d in store.list_datasets(workspace)]
    assert ("First-set (1 images)", str(ds.path)) in train_tab.dataset_choices(ctx)
    opened = tab.open_existing(ctx, "First-set")
    assert opened[0] == str(ds.path) and opened[2][0][2].endswith(", soft lighting")


def test_process_without_files_or_with_bad_settings_says_why(workspace):
    ctx = AppContext(workspace=workspace, captioner="unused")
    assert "Upload some photos" in tab.process(ctx, [], "TOK", "person", "", "close-up", "haar",
                                               "keep")[-1]
    msg = tab.process(ctx, ["/nonexistent.jpg"], "", "person", "", "close-up", "haar", "keep")[-1]
    assert msg.startswith("⚠️ The trigger is empty")
