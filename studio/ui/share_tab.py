"""The Share tab: push a run's LoRA (or a dataset) to the Hugging Face Hub, or download a bundle.

The token typed here lives only in this browser session: on the first push it moves from the
password field into a ``gr.State`` and the field is cleared. It is never echoed, logged or
stored; without one, ``HF_TOKEN`` or the machine's Hugging Face login is used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from studio.dataset.store import list_datasets
from studio.runs.folder import RunFolder
from studio.share.hub import ShareError, push_dataset, push_run, scrub
from studio.ui.context import AppContext
from studio.workspace import WorkspaceError, safe_name

log = logging.getLogger(__name__)

FINAL = "final LoRA"


def _run_dir(ctx: AppContext, name: str) -> Path:
    if not name:
        raise ShareError("Pick a run first.")
    for run in ctx.workspace.list_runs():
        if run["name"] == name:
            return Path(run["path"])
    raise ShareError(f"The run {name} is not in this workspace.")


def _checkpoint(choice: str | None) -> int | None:
    if not choice or choice == FINAL:
        return None
    try:
        return int(str(choice).rsplit(" ", 1)[-1])
    except ValueError:
        raise ShareError(f"Unknown checkpoint {choice!r}.") from None


def checkpoint_choices(ctx: AppContext, name: str | None) -> list[str]:
    try:
        steps = [c.step for c in RunFolder(_run_dir(ctx, name)).checkpoints()] if name else []
    except ShareError:
        steps = []
    return [FINAL] + [f"checkpoint {s}" for s in reversed(steps)]


def _progress_fn(progress):
    if progress is None:
        return None
    return lambda frac, what: progress(frac, desc=what)


def _fail(ctx: AppContext, exc: BaseException, token: str | None, what: str) -> str:
    if isinstance(exc, (ShareError, WorkspaceError)):
        return f"⚠️ {scrub(str(exc), token)}"
    log.error("%s failed: %s", what, type(exc).__name__)
    detail = "" if ctx.remote else f": {type(exc).__name__}"
    return f"⚠️ {what} failed{detail}."


def on_push(ctx: AppContext, run_name: str, checkpoint: str | None, repo_id: str, private: bool,
            token: str | None, progress=None) -> tuple[str, str]:
    """(status markdown, repo URL or "") for the Push button. Never raises."""
    try:
        res = push_run(_run_dir(ctx, run_name), repo_id, private=bool(private),
                       checkpoint=_checkpoint(checkpoint), token=token or None,
                       progress=_progress_fn(progress))
    except Exception as exc:
        return _fail(ctx, exc, token, "The push"), ""
    return f"✅ {res.summary()} [Open the repo]({res.url})", res.url


def on_push_dataset(ctx: AppContext, dataset_name: str, repo_id: str, private: bool,
                    token: str | None, progress=None) -> tuple[str, str]:
    try:
        if not dataset_name:
            raise ShareError("Pick a dataset first.")
        safe_name(dataset_name, "dataset name")
        match = [d for d in list_datasets(ctx.workspace) if d["name"] == dataset_name]
        path = Path(match[0]["path"]) if match else ctx.workspace.dataset_path(dataset_name)
        res = push_dataset(path, repo_id, private=bool(private), token=token or None,
                           progress=_progress_fn(progress))
    except Exception as exc:
        return _fail(ctx, exc, token, "The dataset push"), ""
    return f"✅ {res.summary()} [Open the dataset]({res.url})", res.url


def on_bundle(ctx: AppContext, run_name: str, checkpoint: str | None) -> tuple[str | None, str]:
    from studio.share.bundle import export_run_bundle

    try:
        ck = _checkpoint(checkpoint)
        name = safe_name(run_name or "", "run name")
        suffix = f"-step{ck}" if ck is not None else ""
        out = ctx.workspace.exports_dir / f"{name}{suffix}-{time.strftime('%Y%m%d-%H%M%S')}.zip"
        path = export_run_bundle(_run_dir(ctx, name), out, checkpoint=ck)
    except Exception as exc:
        return None, _fail(ctx, exc, None, "The export")
    return str(path), f"✅ Bundle ready: {path.name}"


def _dataset_names(ctx: AppContext) -> list[str]:
    return [d["name"] for d in list_datasets(ctx.workspace)]


def share_lists(ctx: AppContext, current: str | None) -> tuple:
    """The run list (the current run kept when it is still there), its checkpoints and the
    dataset list, read from the disk."""
    names = [r["name"] for r in ctx.workspace.list_runs()]
    cur = current if current in names else (names[0] if names else None)
    return (gr.update(choices=names, value=cur),
            gr.update(choices=checkpoint_choices(ctx, cur), value=FINAL),
            gr.update(choices=_dataset_names(ctx)))


def build(ctx: AppContext) -> dict:
    runs = [r["name"] for r in ctx.workspace.list_runs()]
    with gr.Tab("Share", id="share") as tab:
        gr.Markdown("Push your LoRA to the Hugging Face Hub (private by default: it shows a real "
                    "person), or download it as one zip for AUTOMATIC1111 / ComfyUI.")
        token_state = gr.State(None)  # this browser session only
        with gr.Row():
            run = gr.Dropdown(runs, value=runs[0] if runs else None, label="Run",
                              elem_id="share-run",
                              info="A run of this workspace; train one in the Train tab.")
            checkpoint = gr.Dropdown(checkpoint_choices(ctx, runs[0] if runs else None),
                                     value=FINAL, label="LoRA", elem_id="share-checkpoint")
            refresh = gr.Button("Refresh", size="sm", elem_id="share-refresh", scale=0,
                                min_width=100)
        with gr.Row():
            repo = gr.Textbox(label="Hub repo", placeholder="your-name/my-lora",
                              elem_id="share-repo")
            private = gr.Checkbox(value=True, label="Private repo", elem_id="share-private")
        token = gr.Textbox(label="Hugging Face token (optional)", type="password",
                           elem_id="share-token",
                           placeholder="hf_... write token; empty: HF_TOKEN or `hf auth login`",
                           info="Kept only in this browser session; never saved or shown.")
        token_note = gr.Markdown(elem_id="share-token-note")
        with gr.Row():
            push = gr.Button("Push LoRA to the Hub", variant="primary", elem_id="share-push")
            bundle = gr.Button("Download bundle (zip)", elem_id="share-bundle")
        status = gr.Markdown(elem_id="share-status")
        url = gr.Textbox(label="Repo URL", interactive=False, elem_id="share-url")
        bundle_file = gr.File(label="Bundle", interactive=False, elem_id="share-bundle-file",
                              height=110)
        with gr.Accordion("Push a dataset", open=False):
            dsets = _dataset_names(ctx)
            dataset = gr.Dropdown(dsets, value=dsets[0] if dsets else None, label="Dataset",
                                  elem_id="share-dataset")
            ds_repo = gr.Textbox(label="Hub dataset repo", placeholder="your-name/my-photos",
                                 elem_id="share-ds-repo")
            ds_private = gr.Checkbox(value=True, label="Private dataset",
                                     elem_id="share-ds-private")
            ds_push = gr.Button("Push dataset", elem_id="share-ds-push")
            ds_status = gr.Markdown(elem_id="share-ds-status")

        def session_token(typed, kept):
            """The token typed now (moved into the session state), else the one kept before."""
            typed = (typed or "").strip()
            return typed or kept or None

        def kept_note(tok):
            return "🔑 A token is kept for this browser session." if tok else ""

        def do_push(run_name, ck, repo_id, priv, typed, kept, progress=gr.Progress()):
            tok = session_token(typed, kept)
            msg, link = on_push(ctx, run_name, ck, repo_id, priv, tok, progress=progress)
            return msg, link, tok, "", kept_note(tok)  # the field is cleared, never echoed

        push.click(do_push, [run, checkpoint, repo, private, token, token_state],
                   [status, url, token_state, token, token_note],
                   concurrency_limit=1, concurrency_id="hub")

        def do_push_ds(name, repo_id, priv, typed, kept, progress=gr.Progress()):
            tok = session_token(typed, kept)
            msg, link = on_push_dataset(ctx, name, repo_id, priv, tok, progress=progress)
            return msg, link, tok, "", kept_note(tok)

        ds_push.click(do_push_ds, [dataset, ds_repo, ds_private, token, token_state],
                      [ds_status, url, token_state, token, token_note],
                      concurrency_limit=1, concurrency_id="hub")
        bundle.click(lambda r, c: on_bundle(ctx, r, c), [run, checkpoint], [bundle_file, status])

        def on_refresh(current):
            return share_lists(ctx, current)

        refresh.click(on_refresh, run, [run, checkpoint, dataset])
        # Opening the tab reads the runs and datasets again (a run or dataset made meanwhile).
        tab.select(on_refresh, run, [run, checkpoint, dataset], show_progress="hidden")
        run.change(lambda r: gr.update(choices=checkpoint_choices(ctx, r), value=FINAL), run,
                   checkpoint)
    return {"run": run, "repo": repo, "token": token, "push": push, "status": status, "url": url,
            "checkpoint": checkpoint, "dataset": dataset, "lists": on_refresh}


def wire(components: dict) -> None:
    """Every page load lists the runs, their checkpoints and the datasets on disk."""
    mine, app = components.get("share") or {}, components.get("app")
    if app is not None and mine.get("lists") is not None:
        app.load(mine["lists"], mine["run"], [mine["run"], mine["checkpoint"], mine["dataset"]],
                 show_progress="hidden")
