"""The Generate tab: prompt + trigger, LoRA, refiner, samplers, a gallery with metadata, export."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr

from studio.generate.engine import GenerationError, GenerationRequest, get_generator
from studio.generate.gallery import Gallery, read_params
from studio.generate.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from studio.models import ModelLoadError
from studio.ui.context import AppContext

log = logging.getLogger(__name__)

NO_LORA = "(none)"
GALLERY_LIMIT = 200


def _gallery_value(gallery: Gallery) -> list[tuple[str, str]]:
    return [(str(it.path), (it.params.get("prompt") or "")[:80])
            for it in gallery.items(limit=GALLERY_LIMIT)]


def run_generation(ctx: AppContext, gallery: Gallery, base, refiner_model, prompt, negative, lora, lora_scale,
                   scheduler, steps, guidance, width, height, seed, num_images, use_refiner,
                   refiner_switch, progress=None) -> tuple[list, str]:
    """Generate and save; returns (gallery value, status markdown). Never raises for user errors."""
    lora = None if not lora or lora == NO_LORA else str(lora).strip()
    req = GenerationRequest(
        prompt=prompt or "", negative_prompt=negative or "", seed=int(seed),
        steps=int(steps), guidance=float(guidance), width=int(width), height=int(height),
        num_images=int(num_images), scheduler=scheduler, lora=lora, lora_scale=float(lora_scale),
        refiner=bool(use_refiner), refiner_switch=float(refiner_switch))
    t0 = time.perf_counter()
    try:
        req.validate()
        gen = get_generator((base or "").strip() or ctx.base,
                            (refiner_model or "").strip() or ctx.refiner, ctx.vae)

        def report(i, n, step, total):
            if progress is not None:
                progress((i * total + step) / (n * total), desc=f"image {i + 1}/{n}, step {step}")

        results = gen.generate(req, progress=report)
    except (ModelLoadError, GenerationError) as exc:
        return _gallery_value(gallery), f"**Error:** {exc}"
    except Exception as exc:  # an unexpected failure: keep the app alive, say what happened
        log.exception("generation failed")
        detail = "" if ctx.remote else f": {type(exc).__name__}: {str(exc)[:200]}"
        return _gallery_value(gallery), f"**Error:** generation failed{detail}."
    for r in results:
        gallery.add(r.image, r.params)
    seeds = ", ".join(str(r.params["seed"]) for r in results)
    return (_gallery_value(gallery),
            f"Done: {len(results)} image(s) in {time.perf_counter() - t0:.1f} s (seed {seeds}).")


def build(ctx: AppContext) -> dict:
    gallery = Gallery(ctx.workspace.gallery_dir)
    demo = ctx.demo
    with gr.Tab("Generate", id="generate"):
        if demo:
            gr.Markdown(ctx.demo_note)
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="gen-prompt",
                                    placeholder="a photo of TOK person, portrait, natural light",
                                    info="Use your LoRA's trigger (e.g. TOK person).")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="gen-negative",
                                      value="blurry, lowres, deformed, watermark")
                with gr.Row():
                    lora = gr.Dropdown(label="LoRA", choices=[NO_LORA] + ctx.lora_choices(),
                                       value=NO_LORA, allow_custom_value=True, elem_id="gen-lora",
                                       info="A trained run, a .safetensors path, or a Hub id "
                                            "(owner/name or owner/name:file.safetensors).")
                    lora_scale = gr.Slider(-1, 2, value=1.0, step=0.05, label="LoRA scale",
                                           elem_id="gen-lora-scale")
                with gr.Row():
                    scheduler = gr.Dropdown(list(SCHEDULERS), value=DEFAULT_SCHEDULER,
                                            label="Sampler", elem_id="gen-scheduler")
                    steps = gr.Slider(1, 100, value=4 if demo else 30, step=1, label="Steps",
                                      elem_id="gen-steps")
                    guidance = gr.Slider(0, 20, value=6.0, step=0.5, label="Guidance (CFG)",
                                         elem_id="gen-guidance")
                with gr.Row():
                    width = gr.Slider(64, 2048, value=64 if demo else 1024, step=8, label="Width",
                                      elem_id="gen-width")
                    height = gr.Slider(64, 2048, value=64 if demo else 1024, step=8,
                                       label="Height", elem_id="gen-height")
                with gr.Row():
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)",
                                     elem_id="gen-seed")
                    num_images = gr.Slider(1, 8, value=1, step=1, label="Images",
                                           elem_id="gen-num")
                with gr.Row():
                    use_refiner = gr.Checkbox(label="SDXL refiner", value=False,
                                              elem_id="gen-refiner",
                                              info="Ensemble of experts: the base denoises up to "
                                                   "the switch, the refiner finishes.")
                    refiner_switch = gr.Slider(0.5, 0.95, value=0.8, step=0.05,
                                               label="Refiner switch", elem_id="gen-switch")
                with gr.Accordion("Models", open=False):
                    base = gr.Textbox(label="Base model", value=ctx.base, elem_id="gen-base",
                                      info="Hub id or local folder of an SDXL base model.")
                    refiner_model = gr.Textbox(label="Refiner model", value=ctx.refiner,
                                               elem_id="gen-refiner-model",
                                               info="Hub id or local folder of the SDXL refiner.")
                go = gr.Button("Generate", variant="primary", elem_id="gen-button")
                status = gr.Markdown(elem_id="gen-status")
            with gr.Column(scale=3):
                images = gr.Gallery(value=_gallery_value(gallery), label="Gallery", columns=3,
                                    height=520, elem_id="gen-gallery", object_fit="contain")
                meta = gr.JSON(label="Image parameters", elem_id="gen-meta")
                with gr.Row():
                    refresh = gr.Button("Refresh gallery", size="sm")
                    export = gr.Button("Export gallery (zip)", size="sm", elem_id="gen-export")
                export_file = gr.File(label="Export", interactive=False, elem_id="gen-export-file")

        def on_generate(*args, progress=gr.Progress()):
            return run_generation(ctx, gallery, *args, progress=progress)

        go.click(on_generate,
                 [base, refiner_model, prompt, negative, lora, lora_scale, scheduler, steps, guidance, width, height,
                  seed, num_images, use_refiner, refiner_switch],
                 [images, status], concurrency_limit=1, concurrency_id="gpu")

        def on_select(evt: gr.SelectData):
            items = gallery.items(limit=GALLERY_LIMIT)
            if evt.index is None or evt.index >= len(items):
                return None
            it = items[evt.index]
            return {"file": it.path.name, **read_params(it.path)}

        images.select(on_select, None, meta)
        refresh.click(lambda: (_gallery_value(gallery),
                               gr.update(choices=[NO_LORA] + ctx.lora_choices())),
                      None, [images, lora])

        def on_export():
            try:
                out = ctx.workspace.exports_dir / f"gallery-{time.strftime('%Y%m%d-%H%M%S')}.zip"
                return str(gallery.export_zip(out)), ""
            except ValueError as exc:
                return None, f"**Error:** {exc}"

        export.click(on_export, None, [export_file, status])
    return {"prompt": prompt, "lora": lora, "images": images, "status": status}


def lora_path_for_run(run_dir: str | Path) -> str:
    return str(Path(run_dir) / "pytorch_lora_weights.safetensors")
