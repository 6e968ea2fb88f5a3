"""The Generate tab: prompt + trigger, LoRA, refiner, samplers, a gallery with metadata, export.

The models are the operator's (``--base``/``--refiner``/``--vae``), shown read-only: a user
chooses the request, never the model that every session and the HTTP API share. The sliders'
ranges come from :data:`studio.generate.request.LIMITS`, like the API's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from studio.errors import StudioError
from studio.generate.embeddings import mapping_note
from studio.generate.gallery import Gallery, read_params
from studio.generate.request import LIMITS, GenerationRequest
from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from studio.lora.refs import is_run_name, resolve_lora
from studio.models import looks_like_path
from studio.ui import generate_gallery as gg
from studio.ui.confirm import delete_buttons, wire_delete
from studio.ui.context import AppContext
from studio.ui.generate_gallery import NO_LORA, gallery_value, lora_choices, lora_update

log = logging.getLogger(__name__)
# The request's inputs, in the order run_generation takes them.
INPUTS = ("prompt", "negative", "lora", "lora_scale", "scheduler", "steps", "guidance", "width",
          "height", "seed", "num_images", "use_refiner", "refiner_switch")


def run_generation(ctx: AppContext, gallery: Gallery, prompt, negative, lora, lora_scale,
                   scheduler, steps, guidance, width, height, seed, num_images, use_refiner,
                   refiner_switch, progress=None) -> tuple[list, str]:
    """Generate with the operator's models and save; returns (gallery value, status markdown).
    Never raises for user errors."""
    lora = None if not lora or lora == NO_LORA else str(lora).strip()
    try:  # a name without "/" is a run of this workspace, never a Hub id
        lora = resolve_lora(lora, ctx.workspace) if lora and is_run_name(lora) else lora
    except StudioError as exc:
        return gallery_value(gallery), f"**Error:** {exc}"
    req = GenerationRequest(
        prompt=prompt or "", negative_prompt=negative or "", seed=int(seed),
        steps=int(steps), guidance=float(guidance), width=int(width), height=int(height),
        num_images=int(num_images), scheduler=scheduler, lora=lora, lora_scale=float(lora_scale),
        refiner=bool(use_refiner), refiner_switch=float(refiner_switch))
    t0 = time.perf_counter()

    def report(i, n, step, total):
        if progress is not None:
            progress((i * total + step) / (n * total), desc=f"image {i + 1}/{n}, step {step}")

    try:
        results = ctx.generation_service().generate(req, progress=report)
    except StudioError as exc:  # GenerationError, ModelLoadError: one sentence
        return gallery_value(gallery), f"**Error:** {exc}"
    except Exception as exc:  # an unexpected failure: keep the app alive, say what happened
        log.exception("generation failed")
        detail = "" if ctx.remote else f": {type(exc).__name__}: {str(exc)[:200]}"
        return gallery_value(gallery), f"**Error:** generation failed{detail}."
    for r in results:
        gallery.add(r.image, r.params)
    seeds = ", ".join(str(r.params["seed"]) for r in results)
    notes = "".join(f"\n\n⚠️ {w}" for w in dict.fromkeys(w for r in results for w in r.warnings))
    return (gallery_value(gallery),
            f"Done: {len(results)} image(s) in {time.perf_counter() - t0:.1f} s (seed {seeds})."
            + (mapping_note(results[0].params) if results else "") + notes)


def slider(name: str, label: str, elem_id: str, value: float | None = None) -> gr.Slider:
    """A slider over ``LIMITS[name]`` (its default unless ``value`` is given)."""
    lim = LIMITS[name]
    lo, hi = lim.ui_range()
    return gr.Slider(lo, hi, value=lim.default if value is None else value, step=lim.step,
                     label=label, elem_id=elem_id)


def _request_inputs(ctx: AppContext) -> dict:
    demo = ctx.demo
    c = {"prompt": gr.Textbox(label="Prompt", lines=3, elem_id="gen-prompt",
                              placeholder="a photo of TOK person, portrait, natural light",
                              info="Use your LoRA's trigger (e.g. TOK person)."),
         "negative": gr.Textbox(label="Negative prompt", lines=2, elem_id="gen-negative",
                                value="blurry, lowres, deformed, watermark")}
    with gr.Row():
        c["lora"] = gr.Dropdown(label="LoRA", choices=lora_choices(ctx),
                                value=NO_LORA, allow_custom_value=True, elem_id="gen-lora",
                                info="A trained run, a .safetensors path, or a Hub id "
                                     "(owner/name or owner/name:file.safetensors).")
        c["lora_scale"] = slider("lora_scale", "LoRA scale", "gen-lora-scale")
    with gr.Row():
        c["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SCHEDULER, label="Sampler",
                                     elem_id="gen-scheduler")
        c["steps"] = slider("steps", "Steps", "gen-steps", 4 if demo else None)
        c["guidance"] = slider("guidance", "Guidance (CFG)", "gen-guidance")
    with gr.Row():
        c["width"] = slider("width", "Width", "gen-width", 64 if demo else None)
        c["height"] = slider("height", "Height", "gen-height", 64 if demo else None)
    with gr.Row():
        seed = LIMITS["seed"]
        c["seed"] = gr.Number(value=seed.default, precision=0, minimum=seed.lo, maximum=seed.hi,
                              label="Seed (-1 = random)", elem_id="gen-seed")
        c["num_images"] = slider("num_images", "Images", "gen-num")
    with gr.Row():
        c["use_refiner"] = gr.Checkbox(label="SDXL refiner", value=False, elem_id="gen-refiner",
                                       info="Ensemble of experts: the base denoises up to the "
                                            "switch, the refiner finishes.")
        c["refiner_switch"] = slider("refiner_switch", "Refiner switch", "gen-switch")
    return c


def shown_source(ctx: AppContext, source: str | None) -> str:
    """A model source as the UI shows it: a server folder only by its name to remote users."""
    if not source:
        return "(none)"
    return Path(source).name if ctx.remote and looks_like_path(source) else source


def _models_panel(ctx: AppContext) -> None:
    with gr.Accordion("Models", open=False):
        gr.Markdown("Chosen by whoever runs the studio (`--base`, `--refiner`, `--vae` or "
                    "`STUDIO_BASE_MODEL`, ...): every session and the HTTP API use the same.")
        gr.Textbox(label="Base model", value=shown_source(ctx, ctx.base), interactive=False,
                   elem_id="gen-base")
        gr.Textbox(label="Refiner model", value=shown_source(ctx, ctx.refiner),
                   interactive=False, elem_id="gen-refiner-model")
        from gradio.context import Context

        from studio.generate.performance import ui_line  # speed and memory modes, and why

        # Filled on page load: asking CUDA imports torch, which the first page does not wait for.
        mode = gr.Markdown("", elem_id="gen-performance")
        if Context.root_block is not None:
            Context.root_block.load(lambda: ui_line(), None, mode, show_progress="hidden")


def _wire(ctx: AppContext, gallery: Gallery, c: dict) -> None:
    def on_generate(*args, progress=gr.Progress()):
        return run_generation(ctx, gallery, *args, progress=progress)

    c["go"].click(on_generate, [c[k] for k in INPUTS], [c["images"], c["status"]],
                  concurrency_limit=1, concurrency_id="gpu")

    def on_select(evt: gr.SelectData):
        name = gg.selected_name(gallery, evt)
        meta = {"file": name, **read_params(gallery.folder / name)} if name else None
        return name, meta, ""

    c["images"].select(on_select, None, [c["selected"], c["meta"], c["gallery_status"]])
    c["refresh"].click(lambda: (gallery_value(gallery), lora_update(ctx)),
                       None, [c["images"], c["lora"]])
    c["reuse"].click(lambda name: gg.reuse_settings(gallery, name), c["selected"],
                     [*(c[k] for k in gg.REUSED), c["gallery_status"]])
    wire_delete(c["delete"], gg.ask_delete, [c["selected"]],
                lambda names: gg.delete_images(gallery, names),
                [c["images"], c["selected"], c["meta"]], c["gallery_status"])

    def on_export():
        try:
            out = ctx.workspace.exports_dir / f"gallery-{time.strftime('%Y%m%d-%H%M%S')}.zip"
            return str(gallery.export_zip(out)), ""
        except ValueError as exc:
            return None, f"**Error:** {exc}"

    c["export"].click(on_export, None, [c["export_file"], c["status"]])


def build(ctx: AppContext) -> dict:
    gallery = Gallery(ctx.workspace.gallery_dir)
    with gr.Tab("Generate", id="generate") as tab:
        if ctx.demo:
            gr.Markdown(ctx.demo_note)
        with gr.Row():
            with gr.Column(scale=2):
                c = _request_inputs(ctx)
                _models_panel(ctx)
                c["go"] = gr.Button("Generate", variant="primary", elem_id="gen-button")
                c["status"] = gr.Markdown(elem_id="gen-status")
            with gr.Column(scale=3):
                c["images"] = gr.Gallery(value=gallery_value(gallery), label="Gallery",
                                         columns=3, height=520, elem_id="gen-gallery",
                                         object_fit="contain")
                c["selected"] = gr.State(None)  # the selected image's file name
                with gr.Row():
                    c["reuse"] = gr.Button("Reuse this image's settings", size="sm",
                                           elem_id="gen-reuse")
                    c["delete"] = delete_buttons("gen")
                c["gallery_status"] = gr.Markdown(elem_id="gen-gallery-status")
                c["meta"] = gr.JSON(label="Image parameters", elem_id="gen-meta")
                with gr.Row():
                    c["refresh"] = gr.Button("Refresh gallery", size="sm", elem_id="gen-refresh")
                    c["export"] = gr.Button("Export gallery (zip)", size="sm",
                                            elem_id="gen-export")
                c["export_file"] = gr.File(label="Export", interactive=False, height=110,
                                           elem_id="gen-export-file")
        _wire(ctx, gallery, c)
    c["tab"] = tab
    c["lists"] = lambda: (gallery_value(gallery), lora_update(ctx))
    # Opening the tab reads the runs again: a run that finished meanwhile is in the LoRA list.
    tab.select(lambda: lora_update(ctx), None, c["lora"], show_progress="hidden")
    return c


def wire(components: dict) -> None:
    """Every page load fills the gallery and the LoRA list from the disk. (Opening the tab,
    by a click or by "Use this LoRA in Generate", reads the runs again: see :func:`build`.)"""
    mine = components.get("generate") or {}
    app = components.get("app")
    if app is not None and mine.get("lists") is not None:
        app.load(mine["lists"], None, [mine["images"], mine["lora"]], show_progress="hidden")
