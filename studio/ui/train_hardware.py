"""The Train tab's "Recommended for this GPU" line: preset, batch size and time per 100 steps
for the GPU here (the logic is :mod:`studio.train.hardware`; computed when the page loads)."""

from __future__ import annotations

import gradio as gr


def recommendation_line() -> str:
    from studio.train.hardware import this_gpu

    return this_gpu().describe()


def recommended_panel() -> gr.Markdown:
    return gr.Markdown(recommendation_line, elem_id="train-hardware")
