"""The Train tab's "Recommended for this GPU" line: preset, batch size and time per 100 steps
for the GPU here (the logic is :mod:`studio.train.hardware`; computed when the page loads)."""

from __future__ import annotations

import gradio as gr


def recommendation_line() -> str:
    from studio.train.hardware import this_gpu

    return this_gpu().describe()


def recommended_panel() -> gr.Markdown:
    """Empty when the page is built, filled on every page load: asking CUDA imports torch
    (seconds), which the first page does not wait for."""
    from gradio.context import Context

    md = gr.Markdown("", elem_id="train-hardware")
    if Context.root_block is not None:
        Context.root_block.load(recommendation_line, None, md, show_progress="hidden")
    return md
