"""Assembles the tabs into one Gradio app."""

from __future__ import annotations

import gradio as gr

from studio.ui import dataset_tab, generate_tab, share_tab, train_tab
from studio.ui.context import AppContext

TITLE = "SDXL LoRA Studio"

# Tabs in product order; modules providing ``build(ctx)`` appended as capabilities land.
TAB_MODULES = [dataset_tab, train_tab, generate_tab, share_tab]


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nFrom a handful of photos to a personal SDXL LoRA and images "
                    "of yourself.")
        for notice in ctx.notices:
            gr.Markdown(notice, elem_classes=["studio-notice"])
        components: dict = {}
        with gr.Tabs() as tabs:
            for mod in TAB_MODULES:
                components[tab_key(mod)] = mod.build(ctx) or {}
        components["tabs"] = tabs
        components["app"] = demo  # for page-load events (demo.load)
        # Cross-tab events (e.g. Train -> Generate): each module's optional wire(components).
        for mod in TAB_MODULES:
            if hasattr(mod, "wire"):
                mod.wire(components)
    return demo


def tab_key(mod) -> str:
    """"studio.ui.generate_tab" -> "generate": the key of a tab's components."""
    return mod.__name__.rsplit(".", 1)[-1].removesuffix("_tab")
