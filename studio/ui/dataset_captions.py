"""The Dataset tab's captions: the per-image editor next to the image, the table for bulk edits,
find/replace and prefix/suffix, and the caption linter.

The table is the one copy of the captions until Save. The editor shows one row of it (the crop,
its caption, Apply / previous / next) and is redrawn from the table after every change to it, so
it never shows, and Apply never writes back, a caption the table no longer holds.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
from PIL import Image, ImageOps

from studio.dataset import caption as cap
from studio.dataset import store
from studio.errors import StudioError

HEADERS = ["file", "source", "caption", "keep"]
PREVIEW = 512
# The per-image editor's outputs, in the order the functions below return them.
EDITOR = ("row_idx", "one_image", "one_title", "one_caption")


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


def _clean(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text or "")).strip()


def lint_markdown(rows: list[list[Any]], trigger: str, class_word: str) -> str:
    kept = [r for r in rows if _keep(r[3])]
    issues = cap.lint_captions([str(r[2]) for r in kept], trigger, class_word,
                               [str(r[0]) for r in kept])
    warn = cap.trigger_warnings(trigger, class_word)
    if not issues and not warn:
        return "✅ Captions look fine." if kept else ""
    return "\n".join(f"- ⚠️ {w}" for w in warn + issues)


def bulk(rows_in: Any, op: str, a: str, b: str = "", regex: bool = False) -> tuple[list, str]:
    """Find/replace, prefix or suffix on every caption; the status counts the captions that
    changed."""
    rows = _rows(rows_in)
    before = [str(r[2] or "") for r in rows]
    try:
        if op == "replace":
            after = cap.find_replace(before, a, b, regex=regex)
        elif op == "prefix":
            after = cap.add_prefix(before, a)
        else:
            after = cap.add_suffix(before, a)
    except StudioError as exc:
        return rows, f"⚠️ {exc}"
    for r, c in zip(rows, after, strict=True):
        r[2] = c
    changed = sum(x != y for x, y in zip(before, after, strict=True))
    if not changed:
        return rows, "No caption changed."
    return rows, f"Edited {changed} caption(s) of {len(rows)}; Save the dataset to keep them."


def _preview(current: str | None, file_name: str) -> Image.Image | None:
    """The crop ``file_name`` of the dataset folder ``current``, at most PREVIEW px."""
    try:
        path = store.open_dataset(current).image_path(file_name) if current else None
        if path is None:
            return None
        with Image.open(path) as im:
            return ImageOps.contain(im.convert("RGB"), (PREVIEW, PREVIEW))
    except (StudioError, OSError):
        return None


def show_row(current: str | None, rows_in: Any, idx: Any) -> tuple:
    """The editor at row ``idx`` (clamped into the table): index, image, title, caption."""
    rows = _rows(rows_in)
    if not rows:
        return 0, None, "", ""
    i = min(max(int(idx or 0), 0), len(rows) - 1)
    name = str(rows[i][0])
    source = f" (from {rows[i][1]})" if rows[i][1] else ""
    dropped = "; dropped on Save" if not _keep(rows[i][3]) else ""
    title = f"**{name}**{source}: image {i + 1} of {len(rows)}{dropped}"
    return i, _preview(current, name), title, str(rows[i][2] or "")


def select_row(current: str | None, rows_in: Any, evt: gr.SelectData) -> tuple:
    """A click on a gallery image or a table cell shows that row in the editor (and the message
    about an earlier row gives way)."""
    idx = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if not isinstance(idx, int) or not 0 <= idx < len(_rows(rows_in)):
        return (*(gr.update() for _ in EDITOR), gr.update())
    return (*show_row(current, rows_in, idx), "")


def apply_caption(rows_in: Any, idx: Any, text: str) -> tuple[list, str]:
    """Write the editor's text into row ``idx`` of the table."""
    rows = _rows(rows_in)
    i = int(idx or 0)
    if not (0 <= i < len(rows)):
        return rows, "⚠️ Select an image first."
    if rows[i][2] == _clean(text):
        return gr.skip(), f"The caption of {rows[i][0]} is unchanged."
    rows[i][2] = _clean(text)
    return rows, f"Caption of {rows[i][0]} changed; Save the dataset to keep it."


def step(current: str | None, rows_in: Any, idx: Any, text: str, delta: int) -> tuple:
    """Previous/next: the editor's text is applied to its row first (an edit is never lost),
    then the editor moves ``delta`` rows (wrapping around). Returns (table, *editor, status)."""
    rows = _rows(rows_in)
    if not rows:
        return (rows, *show_row(current, rows, 0), "⚠️ Process photos or open a dataset first.")
    i = min(max(int(idx or 0), 0), len(rows) - 1)
    changed = rows[i][2] != _clean(text)
    rows[i][2] = _clean(text)
    status = f"Applied the caption of {rows[i][0]}; Save the dataset to keep it." if changed \
        else ""
    return (rows, *show_row(current, rows, (i + delta) % len(rows)), status)


def table_edited(current: str | None, rows_in: Any, idx: Any) -> tuple:
    """A caption typed into the table: the editor shows the table's row again, and the message
    of an earlier editor change gives way."""
    return (*show_row(current, rows_in, idx),
            "Table edited; Save the dataset to keep the changes.")


def caption_editor() -> dict[str, Any]:
    """The per-image editor, the caption table and the bulk edits."""
    w: dict[str, Any] = {"row_idx": gr.State(0)}
    gr.Markdown("#### Captions\nClick an image (in the gallery or the table) to edit its caption "
                "next to it, or edit captions in the table; type *no* in the keep column to drop "
                "an image.")
    with gr.Row(elem_id="ds-editor"):
        w["one_image"] = gr.Image(label="Crop", type="pil", interactive=False, height=320,
                                  elem_id="ds-one-image", scale=2)
        with gr.Column(scale=3):
            w["one_title"] = gr.Markdown(elem_id="ds-one-title")
            w["one_caption"] = gr.Textbox(label="Caption", lines=4, elem_id="ds-caption-edit")
            with gr.Row():
                w["prev"] = gr.Button("◀ Previous", size="sm", elem_id="ds-caption-prev")
                w["apply_one"] = gr.Button("Apply caption", size="sm", variant="primary",
                                           elem_id="ds-caption-apply")
                w["next"] = gr.Button("Next ▶", size="sm", elem_id="ds-caption-next")
            w["edit_status"] = gr.Markdown(elem_id="ds-edit-status")
    w["table"] = gr.Dataframe(headers=HEADERS, datatype=["str", "str", "str", "str"],
                              type="array", interactive=True, static_columns=[0, 1], wrap=True,
                              column_widths=["10%", "18%", "62%", "10%"], elem_id="ds-captions")
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


def connect_captions(w: dict[str, Any]) -> None:
    """The editor's and the table's events (``w`` also holds current, gallery, trigger,
    class_word)."""
    editor = [w[k] for k in EDITOR]
    table, current, status = w["table"], w["current"], w["edit_status"]
    w["table"].change(lint_markdown, [table, w["trigger"], w["class_word"]], w["lint"])
    # A caption typed into the table: the editor shows the table's row again. (Apply, previous
    # and next set the editor themselves; a bulk edit, Process, Open and Delete redraw it after
    # they changed the table: see refresh_editor. Redrawing on every table change instead would
    # race with typing in the box.)
    w["table"].input(table_edited, [current, table, w["row_idx"]], [*editor, status],
                     show_progress="hidden")
    for source in (w["table"], w["gallery"]):
        source.select(select_row, [current, table], [*editor, status], show_progress="hidden")
    w["apply_one"].click(apply_caption, [table, w["row_idx"], w["one_caption"]], [table, status])
    for button, delta in ((w["prev"], -1), (w["next"], 1)):
        button.click(lambda c, r, i, t, d=delta: step(c, r, i, t, d),
                     [current, table, w["row_idx"], w["one_caption"]], [table, *editor, status])
    refresh_editor(w, w["replace_btn"].click(lambda r, a, b, x: bulk(r, "replace", a, b, x),
                                             [table, w["find"], w["replace"], w["use_regex"]],
                                             [table, status]))
    for button, op in ((w["prefix_btn"], "prefix"), (w["suffix_btn"], "suffix")):
        refresh_editor(w, button.click(lambda r, a, o=op: bulk(r, o, a), [table, w["affix"]],
                                       [table, status]))


def refresh_editor(w: dict[str, Any], event: Any) -> None:
    """After ``event`` changed the table, the editor shows the table's caption of its row."""
    event.then(show_row, [w["current"], w["table"], w["row_idx"]], [w[k] for k in EDITOR],
               show_progress="hidden")
