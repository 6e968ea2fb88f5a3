"""Assembles the tabs into one Gradio app."""

from __future__ import annotations

import gradio as gr

from studio.ui import generate_tab
from studio.ui.context import AppContext

TITLE = "SDXL LoRA Studio"

# Tabs in product order; modules providing ``build(ctx)`` appended as capabilities land.
TAB_MODULES = [generate_tab]


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nFrom a handful of photos to a personal SDXL LoRA and images "
                    "of yourself.")
        for notice in ctx.notices:
            gr.Markdown(notice, elem_classes=["studio-notice"])
        with gr.Tabs():
            for mod in TAB_MODULES:
                mod.build(ctx)
    return demo
