"""The Dataset tab: upload photos, process (validate, crop, caption), review crops next to
originals, edit captions one by one or in bulk, read the quality report, save to the workspace.

Processing writes a complete dataset into a staging folder under the workspace's tmp/; Save
applies the caption edits there and moves it to ``datasets/NAME`` (or, for a dataset opened
from the list, rewrites its captions in place).
"""

from __future__ import annotations

import logging
import re
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
from studio.ui.context import AppContext
from studio.workspace import slugify

log = logging.getLogger(__name__)

HEADERS = ["file", "source", "caption", "keep"]
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
    rejected = rep.get("rejected", [])
    if rejected:
        blocks.append("**Not used**\n\n" + "\n".join(f"- ❌ {r['file']}: {r['reason']}"
                                                      for r in rejected))
    if not set_warn and not img_lines and not rejected:
        blocks.append("✅ No problems found.")
    return "\n\n".join(blocks)


def _rows(table: Any) -> list[list[Any]]:
    """The dataframe value as rows (Gradio may hand over a list or a pandas DataFrame)."""
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):
        return [list(r) for r in table.values.tolist()]
    return [list(r) for r in table]


def _keep(v: Any) -> bool:
    """The keep column: only an explicit no/false/0/drop drops an image."""
    if isinstance(v, str):
        return v.strip().lower() not in ("false", "0", "no", "n", "drop")
    return v is None or bool(v)


def lint_markdown(rows: list[list[Any]], trigger: str, class_word: str) -> str:
    kept = [r for r in rows if _keep(r[3])]
    issues = cap.lint_captions([str(r[2]) for r in kept], trigger, class_word,
                               [str(r[0]) for r in kept])
    warn = cap.trigger_warnings(trigger, class_word)
    if not issues and not warn:
        return "✅ Captions look fine." if kept else ""
    return "\n".join(f"- ⚠️ {w}" for w in warn + issues)


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


def bulk(rows_in: Any, op: str, a: str, b: str = "", regex: bool = False) -> tuple[list, str]:
    rows = _rows(rows_in)
    caps = [str(r[2] or "") for r in rows]
    try:
        if op == "replace":
            caps = cap.find_replace(caps, a, b, regex=regex)
        elif op == "prefix":
            caps = cap.add_prefix(caps, a)
        else:
            caps = cap.add_suffix(caps, a)
    except StudioError as exc:
        return rows, f"⚠️ {exc}"
    for r, c in zip(rows, caps, strict=True):
        r[2] = c
    return rows, f"Edited {len(rows)} caption(s); Save to keep the changes."


def dataset_names(ctx: AppContext) -> list[str]:
    return [d["name"] for d in store.list_datasets(ctx.workspace)]


def trigger_note(trigger: str, class_word: str) -> str:
    return "\n".join(f"⚠️ {w}" for w in cap.trigger_warnings(trigger, class_word))


def select_row(rows_in: Any, evt: gr.SelectData) -> tuple[Any, Any]:
    """A click on a table cell or a gallery image: that row's index and caption."""
    rows = _rows(rows_in)
    idx = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if idx is None or not (0 <= int(idx) < len(rows)):
        return gr.update(), gr.update()
    return int(idx), str(rows[int(idx)][2])


def apply_caption(rows_in: Any, idx: Any, text: str) -> tuple[list, str]:
    rows = _rows(rows_in)
    i = int(idx or 0)
    if not (0 <= i < len(rows)):
        return rows, "⚠️ No such row."
    rows[i][2] = re.sub(r"\s+", " ", str(text or "")).strip()
    return rows, f"Caption of {rows[i][0]} changed; Save to keep it."


class _Handlers:
    """The tab's event handlers that need the app context."""

    def __init__(self, ctx: AppContext):
        self.ctx = ctx

    def process(self, files, trigger, class_word, template, framing, detector, no_face,
                progress=gr.Progress()):
        path, gal, rows, rep, msg = process(self.ctx, files, trigger, class_word, template,
                                            framing, detector, no_face, progress)
        return path, gal, rows, rep, msg, lint_markdown(rows, trigger, class_word)

    def save(self, current, name, table):
        return save(self.ctx, current, name, table)

    def open(self, name):
        return open_existing(self.ctx, name)

    def choices(self):
        return gr.update(choices=dataset_names(self.ctx))


def build(ctx: AppContext) -> dict:
    with gr.Tab("Dataset", id="dataset"):
        if ctx.demo:
            gr.Markdown(ctx.demo_note)
        w: dict[str, Any] = {"current": gr.State(None)}
        with gr.Row():
            w["existing"] = gr.Dropdown(dataset_names(ctx), value=None, label="Existing datasets",
                                        elem_id="ds-existing", scale=3)
            w["open"] = gr.Button("Open", size="sm", elem_id="ds-open", scale=1)
            w["refresh"] = gr.Button("Refresh list", size="sm", scale=1)
        with gr.Row():
            with gr.Column(scale=2):
                w.update(_settings())
            with gr.Column(scale=3):
                w["gallery"] = gr.Gallery(label="Original | crop", columns=2, height=420,
                                          object_fit="contain", elem_id="ds-gallery")
                w["report"] = gr.Markdown(elem_id="ds-report")
        w.update(_caption_editor())
        dataset_masks.build(w["current"])
        with gr.Row():
            w["name"] = gr.Textbox(label="Dataset name", value="my-dataset", elem_id="ds-name",
                                   info="Letters, digits, '.', '_' or '-'.", scale=3)
            w["save"] = gr.Button("Save dataset", variant="primary", elem_id="ds-save", scale=1)
        w["save_status"] = gr.Markdown(elem_id="ds-save-status")
        _connect(_Handlers(ctx), w)
    return {"files": w["files"], "table": w["table"], "gallery": w["gallery"], "save": w["save"]}


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


def _caption_editor() -> dict[str, Any]:
    """The caption table, the one-row editor and the bulk edits."""
    w: dict[str, Any] = {}
    gr.Markdown("#### Captions\nEdit a caption in the table (or select a row and use the "
                "editor below); type *no* in the keep column to drop an image.")
    w["table"] = gr.Dataframe(headers=HEADERS, datatype=["str", "str", "str", "str"],
                              type="array", interactive=True, static_columns=[0, 1], wrap=True,
                              column_widths=["10%", "18%", "62%", "10%"], elem_id="ds-captions")
    with gr.Row():
        w["row_idx"] = gr.Number(value=0, precision=0, label="Row", minimum=0, scale=1,
                                 elem_id="ds-row")
        w["one_caption"] = gr.Textbox(label="Caption of the selected row", scale=5,
                                      elem_id="ds-caption-edit")
        w["apply_one"] = gr.Button("Apply", size="sm", scale=1, elem_id="ds-caption-apply")
    with gr.Row():
        w["find"] = gr.Textbox(label="Find", elem_id="ds-find")
        w["replace"] = gr.Textbox(label="Replace with", elem_id="ds-replace")
        w["use_regex"] = gr.Checkbox(label="Regex", value=False)
        w["replace_btn"] = gr.Button("Replace all", size="sm", elem_id="ds-replace-btn")
    with gr.Row():
        w["affix"] = gr.Textbox(label="Prefix / suffix text", elem_id="ds-affix")
        w["prefix_btn"] = gr.Button("Add prefix", size="sm", elem_id="ds-prefix-btn")
        w["suffix_btn"] = gr.Button("Add suffix", size="sm", elem_id="ds-suffix-btn")
    w["lint"] = gr.Markdown(elem_id="ds-lint")
    return w


def _connect(h: _Handlers, w: dict[str, Any]) -> None:
    """The tab's events."""
    settings = [w[k] for k in ("files", "trigger", "class_word", "template", "framing",
                               "detector", "no_face")]
    w["process"].click(h.process, settings, [w[k] for k in ("current", "gallery", "table",
                                                            "report", "status", "lint")],
                       concurrency_limit=1, concurrency_id="gpu")
    for box in (w["trigger"], w["class_word"]):
        box.change(trigger_note, [w["trigger"], w["class_word"]], w["trigger_note"])
    w["table"].change(lint_markdown, [w["table"], w["trigger"], w["class_word"]], w["lint"])
    for source in (w["table"], w["gallery"]):
        source.select(select_row, [w["table"]], [w["row_idx"], w["one_caption"]])
    edited = [w["table"], w["save_status"]]
    w["apply_one"].click(apply_caption, [w["table"], w["row_idx"], w["one_caption"]], edited)
    w["replace_btn"].click(lambda r, a, b, x: bulk(r, "replace", a, b, x),
                           [w["table"], w["find"], w["replace"], w["use_regex"]], edited)
    w["prefix_btn"].click(lambda r, a: bulk(r, "prefix", a), [w["table"], w["affix"]], edited)
    w["suffix_btn"].click(lambda r, a: bulk(r, "suffix", a), [w["table"], w["affix"]], edited)
    w["save"].click(h.save, [w["current"], w["name"], w["table"]],
                    [w["current"], w["existing"], w["save_status"]])
    w["open"].click(h.open, [w["existing"]],
                    [w[k] for k in ("current", "gallery", "table", "report", "name", "trigger",
                                    "class_word", "status")])
    w["refresh"].click(h.choices, None, w["existing"])
    # Every page load (a browser refresh, a restarted app) lists the datasets on disk.
    from gradio.context import Context

    if Context.root_block is not None:
        Context.root_block.load(h.choices, None, w["existing"])
