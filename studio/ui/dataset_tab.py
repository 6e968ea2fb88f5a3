"""The Dataset tab: upload photos, process (validate, crop, caption), review crops next to
originals, edit captions one by one or in bulk, read the quality report, save to the workspace.

Processing writes a complete dataset into a staging folder under the workspace's tmp/; Save
applies the caption edits there and moves it to ``datasets/NAME`` (or, for a dataset opened
from the list, rewrites its captions in place).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageOps

from studio.dataset import DatasetError, store
from studio.dataset import caption as cap
from studio.dataset.crop import DEFAULT_FRAMING, FRAMING_CHOICES, FRAMING_HELP
from studio.dataset.faces import DETECTOR_CHOICES
from studio.dataset.pipeline import prepare_dataset
from studio.errors import StudioError
from studio.ui import dataset_masks
from studio.ui.confirm import delete_buttons, wire_delete
from studio.ui.context import AppContext
from studio.ui.dataset_captions import (  # noqa: F401 (the tab's caption API)
    HEADERS,
    _keep,
    _rows,
    apply_caption,
    bulk,
    caption_editor,
    connect_captions,
    lint_markdown,
    refresh_editor,
)
from studio.ui.dataset_identity import identity_markdown
from studio.workspace import slugify

log = logging.getLogger(__name__)

UPLOAD_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".gif", ".zip"]
THUMB = 256


def _thumb_pair(original: Path, crop: Path) -> Image.Image:
    """The original (letterboxed) and its crop side by side, for the gallery."""
    canvas = Image.new("RGB", (2 * THUMB + 8, THUMB), (245, 245, 245))
    for i, p in enumerate((original, crop)):
        try:
            with Image.open(p) as im:
                im = ImageOps.contain(im.convert("RGB"), (THUMB, THUMB))
        except OSError:
            continue
        canvas.paste(im, (i * (THUMB + 8) + (THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return canvas


def gallery_value(ds: store.DatasetInfo) -> list[tuple[Image.Image, str]]:
    out = []
    for e in ds.entries:
        name = e["file_name"]
        out.append((_thumb_pair(ds.path / store.ORIGINALS / name, ds.path / store.IMAGES / name),
                    f"{name}: original | crop"))
    return out


def table_value(ds: store.DatasetInfo) -> list[list[Any]]:
    sources = ds.info.get("sources") or {}
    return [[e["file_name"], sources.get(e["file_name"], ""), e["text"], "yes"] for e in ds.entries]


def report_markdown(ds: store.DatasetInfo, notices: list[str] | None = None) -> str:
    rep = ds.report or {}
    title = "Processed photos" if ds.name == "staging" else ds.name
    blocks = [f"### {title}: {ds.info.get('count', len(ds.entries))} image(s), trigger "
              f"`{ds.info.get('trigger')}`, class `{ds.info.get('class_word')}`, framing "
              f"{ds.info.get('framing')}, detector {ds.info.get('detector')}"]
    blocks += [f"> ⚠️ {n}" for n in (notices if notices is not None else rep.get("notices", []))]
    set_warn = (rep.get("set") or {}).get("warnings", [])
    if set_warn:
        blocks.append("**Set**\n\n" + "\n".join(f"- ⚠️ {w}" for w in set_warn))
    img_lines = [f"- **{im['file']}** ({im.get('source', '')}): {w}"
                 for im in rep.get("images", []) for w in im.get("warnings", [])]
    if img_lines:
        blocks.append("**Images**\n\n" + "\n".join(img_lines))
    blocks += [identity_markdown(rep)] if rep.get("identity") else []
    rejected = rep.get("rejected", [])
    if rejected:
        blocks.append("**Not used**\n\n" + "\n".join(f"- ❌ {r['file']}: {r['reason']}"
                                                      for r in rejected))
    if not set_warn and not img_lines and not rejected:
        blocks.append("✅ No problems found.")
    return "\n\n".join(blocks)


def _clean_staging(root: Path, max_age_s: float = 24 * 3600) -> None:
    """Remove staged datasets nobody saved within a day."""
    if not root.is_dir():
        return
    now = time.time()
    for p in root.iterdir():
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            continue


def process(ctx: AppContext, files, trigger, class_word, template, framing, detector, no_face,
            progress=None) -> tuple[str | None, list, list, str, str]:
    """Prepare uploaded files into a staging dataset. Returns (staging path, gallery, table,
    report markdown, status)."""
    paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        return None, [], [], "", "⚠️ Upload some photos first (10-20 of one person is best)."
    _clean_staging(ctx.workspace.tmp_dir / "staging")
    staging = ctx.workspace.tmp_dir / "staging" / uuid.uuid4().hex[:12]

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(frac, desc=msg)

    t0 = time.perf_counter()
    try:
        result = prepare_dataset(paths, staging, trigger=trigger, class_word=class_word,
                                 framing=framing, detector=detector, captioner=ctx.captioner,
                                 progress=report, template=template, no_face=no_face,
                                 name="staging")
    except StudioError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return None, [], [], "", f"⚠️ {exc}"
    except Exception as exc:  # keep the app alive and say what happened
        log.exception("dataset preparation failed")
        shutil.rmtree(staging, ignore_errors=True)
        detail = "" if ctx.remote else f": {type(exc).__name__}: {str(exc)[:200]}"
        return None, [], [], "", f"⚠️ Processing failed{detail}."
    ds = result.dataset
    rejected = len(result.outcomes) - result.count
    status = (f"✅ {result.count} image(s) ready, {rejected} not used, in "
              f"{time.perf_counter() - t0:.0f} s. Review the captions, then name the dataset "
              "and Save.")
    return (str(ds.path), gallery_value(ds), table_value(ds),
            report_markdown(ds, result.notices), status)


def save(ctx: AppContext, current: str | None, name: str, table: Any) -> tuple[str, Any, str]:
    """Write caption edits and drops; a staged dataset is moved to datasets/NAME.
    Returns (new current path, dataset dropdown update, status)."""
    if not current or not Path(current).is_dir():
        return current or "", gr.update(), "⚠️ Nothing to save: process photos or open a dataset."
    rows = _rows(table)
    captions = {str(r[0]): str(r[2] or "").strip() for r in rows}
    drop = [str(r[0]) for r in rows if not _keep(r[3])]
    ws = ctx.workspace
    try:
        src = Path(current)
        staged = src.resolve().is_relative_to(ws.tmp_dir.resolve())
        ds = store.save_captions(src, captions, drop)
        if staged:
            dest = ws.dataset_path(slugify(name or "", "") or "")
            ds = store.publish(src, dest, name=dest.name, workspace=ws)
        else:
            store.register(ws, ds)
    except StudioError as exc:
        return current, gr.update(), f"⚠️ {exc}"
    choices = dataset_names(ctx)
    return (str(ds.path), gr.update(choices=choices, value=ds.path.name),
            f"✅ Saved {ds.info['count']} image(s) to {ds.path} (hash {ds.info['hash'][:12]}).")


def open_existing(ctx: AppContext, name: str) -> tuple[str | None, list, list, str, str, str, str,
                                                      str]:
    if not name:
        return None, [], [], "", "", "", "", "⚠️ Pick a dataset."
    match = next((d for d in store.list_datasets(ctx.workspace) if d["name"] == name), None)
    try:
        if match is None:
            raise DatasetError(f"The dataset {name!r} was not found; refresh the list.")
        ds = store.open_dataset(match["path"])
    except StudioError as exc:
        return None, [], [], "", "", "", "", f"⚠️ {exc}"
    return (str(ds.path), gallery_value(ds), table_value(ds), report_markdown(ds),
            ds.path.name, ds.info.get("trigger", ""), ds.info.get("class_word", ""),
            f"Opened {ds.path}.")


def dataset_names(ctx: AppContext) -> list[str]:
    return [d["name"] for d in store.list_datasets(ctx.workspace)]


def trigger_note(trigger: str, class_word: str) -> str:
    return "\n".join(f"⚠️ {w}" for w in cap.trigger_warnings(trigger, class_word))


def saved_value(ctx: AppContext, folder: str | Path) -> str | None:
    """The dataset at ``folder`` as the Train tab's dataset list names it (its listed path)."""
    target = Path(folder).resolve()
    return next((d["path"] for d in store.list_datasets(ctx.workspace)
                 if Path(d["path"]).resolve() == target), None)


def ask_delete(name: str | None) -> tuple[str | None, str]:
    if not name:
        return None, "⚠️ Pick a dataset in the list first."
    return name, f"Delete the dataset {name} and its images? This cannot be undone."


def delete_dataset(ctx: AppContext, name: str, current: str | None) -> tuple:
    """Delete ``name`` (refused while a queued or running training uses it). Returns the
    dataset list, the tab's current dataset, gallery, table, saved name, Train button and the
    status; the editor is emptied when it showed the deleted dataset."""
    busy = [j.dataset for j in ctx.job_service().list(["queued", "running"])]
    gone = store.delete_dataset(ctx.workspace, name, in_use=busy)
    choices = gr.update(choices=dataset_names(ctx), value=None)
    status = f"🗑️ Deleted the dataset {name}."
    if current and Path(current).resolve() == gone:
        return choices, None, [], [], None, gr.update(interactive=False), status
    return choices, *(gr.update() for _ in range(5)), status


class _Handlers:
    """The tab's event handlers that need the app context."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def process(self, files, trigger, class_word, template, framing, detector, no_face,
                progress=gr.Progress()):
        path, gal, rows, rep, msg = process(self.ctx, files, trigger, class_word, template,
                                            framing, detector, no_face, progress)
        # A new, unsaved set: nothing to train on until it is saved.
        return (path, gal, rows, rep, msg, lint_markdown(rows, trigger, class_word), None,
                gr.update(interactive=False))

    def save(self, current, name, table):
        new, choices, status = save(self.ctx, current, name, table)
        if not status.startswith("✅"):
            return new, choices, status, gr.update(), gr.update()
        saved = saved_value(self.ctx, new)
        return new, choices, status, saved, gr.update(interactive=saved is not None)

    def open(self, name):
        out = open_existing(self.ctx, name)
        saved = saved_value(self.ctx, out[0]) if out[0] else None
        return (*out, saved, gr.update(interactive=saved is not None))

    def choices(self):
        return gr.update(choices=dataset_names(self.ctx))

    def delete(self, name, current):
        return delete_dataset(self.ctx, name, current)


def build(ctx: AppContext) -> dict:
    with gr.Tab("Dataset", id="dataset"):
        if ctx.demo:
            gr.Markdown(ctx.demo_note)
        w: dict[str, Any] = {"current": gr.State(None), "saved_name": gr.State(None)}
        with gr.Row():
            w["existing"] = gr.Dropdown(dataset_names(ctx), value=None, label="Existing datasets",
                                        elem_id="ds-existing", scale=3)
            w["open"] = gr.Button("Open", size="sm", elem_id="ds-open", scale=1)
            w["refresh"] = gr.Button("Refresh list", size="sm", scale=1, elem_id="ds-refresh")
            with gr.Column(scale=1, min_width=120):
                w["delete"] = delete_buttons("ds")
        w["list_status"] = gr.Markdown(elem_id="ds-list-status")
        with gr.Row():
            with gr.Column(scale=2):
                w.update(_settings())
            with gr.Column(scale=3):
                w["gallery"] = gr.Gallery(label="Original | crop (click one to edit its "
                                          "caption)", columns=2, height=420,
                                          object_fit="contain", elem_id="ds-gallery")
                w["report"] = gr.Markdown(elem_id="ds-report")
        w.update(caption_editor())
        dataset_masks.build(w["current"])
        with gr.Row():
            w["name"] = gr.Textbox(label="Dataset name", value="my-dataset", elem_id="ds-name",
                                   info="Letters, digits, '.', '_' or '-'.", scale=3)
            w["save"] = gr.Button("Save dataset", variant="primary", elem_id="ds-save", scale=1)
        w["save_status"] = gr.Markdown(elem_id="ds-save-status")
        w["to_train"] = gr.Button("Train on this dataset ▶", variant="primary",
                                  interactive=False, elem_id="ds-to-train")
        _connect(_Handlers(ctx), w)
    return {**{k: w[k] for k in ("files", "table", "gallery", "save", "existing", "to_train",
                                 "saved_name")}, "ctx": ctx}


def _settings() -> dict[str, Any]:
    """Upload, trigger, class word, template, framing, detector and the Process button."""
    w: dict[str, Any] = {}
    w["files"] = gr.File(label="Photos (drag and drop several files or a zip)",
                         file_count="multiple", file_types=UPLOAD_TYPES, elem_id="ds-upload")
    with gr.Row():
        w["trigger"] = gr.Textbox(value=cap.DEFAULT_TRIGGER, label="Trigger", elem_id="ds-trigger",
                                  info="A rare token such as ohwx, sks or TOK.")
        w["class_word"] = gr.Textbox(value=cap.DEFAULT_CLASS_WORD, label="Class word",
                                     elem_id="ds-class", info="person, man, woman ...")
    w["template"] = gr.Textbox(value=cap.DEFAULT_TEMPLATE, label="Caption template",
                               elem_id="ds-template",
                               info="{trigger}, {class_word} and {caption} (BLIP's text).")
    w["trigger_note"] = gr.Markdown(elem_id="ds-trigger-note")
    w["framing"] = gr.Radio(FRAMING_CHOICES, value=DEFAULT_FRAMING, label="Framing",
                            elem_id="ds-framing",
                            info="; ".join(f"{k}: {v}" for k, v in FRAMING_HELP.items()))
    with gr.Row():
        w["detector"] = gr.Dropdown(DETECTOR_CHOICES, value="auto", label="Face detector",
                                    elem_id="ds-detector",
                                    info="auto: RetinaFace, or OpenCV Haar offline.")
        w["no_face"] = gr.Radio(["keep", "drop"], value="keep", label="Photos without a face",
                                elem_id="ds-noface")
    w["process"] = gr.Button("Process photos", variant="primary", elem_id="ds-process")
    w["status"] = gr.Markdown(elem_id="ds-status")
    return w


def _connect(h: _Handlers, w: dict[str, Any]) -> None:
    """The tab's events."""
    settings = [w[k] for k in ("files", "trigger", "class_word", "template", "framing",
                               "detector", "no_face")]
    refresh_editor(w, w["process"].click(h.process, settings, [w[k] for k in (
        "current", "gallery", "table", "report", "status", "lint", "saved_name", "to_train")],
        concurrency_limit=1, concurrency_id="gpu"))
    for box in (w["trigger"], w["class_word"]):
        box.change(trigger_note, [w["trigger"], w["class_word"]], w["trigger_note"])
    connect_captions(w)
    w["save"].click(h.save, [w["current"], w["name"], w["table"]],
                    [w[k] for k in ("current", "existing", "save_status", "saved_name",
                                    "to_train")])
    refresh_editor(w, w["open"].click(h.open, [w["existing"]], [w[k] for k in (
        "current", "gallery", "table", "report", "name", "trigger", "class_word", "status",
        "saved_name", "to_train")]))
    w["refresh"].click(h.choices, None, w["existing"])
    refresh_editor(w, wire_delete(w["delete"], ask_delete, [w["existing"]], h.delete,
                                  [w[k] for k in ("existing", "current", "gallery", "table",
                                                  "saved_name", "to_train")],
                                  w["list_status"], extra=[w["current"]]))
    # Every page load (a browser refresh, a restarted app) lists the datasets on disk.
    from gradio.context import Context

    if Context.root_block is not None:
        Context.root_block.load(h.choices, None, w["existing"])
