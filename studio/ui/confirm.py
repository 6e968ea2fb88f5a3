"""A two-step delete for the tabs: "Delete…" names what would go and reveals "Confirm delete" and
"Keep"; only "Confirm delete" deletes, and it deletes what was named then (kept in a State), not
what happens to be selected by the time it is clicked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.errors import StudioError


def delete_buttons(prefix: str, label: str = "Delete…") -> dict[str, Any]:
    """The three buttons (only "Delete…" visible) and the State of the pending target."""
    with gr.Row():
        b = {"ask": gr.Button(label, size="sm", elem_id=f"{prefix}-delete"),
             "confirm": gr.Button("Confirm delete", size="sm", variant="stop", visible=False,
                                  elem_id=f"{prefix}-delete-confirm"),
             "keep": gr.Button("Keep", size="sm", visible=False, elem_id=f"{prefix}-delete-keep")}
    b["target"] = gr.State(None)
    return b


def _buttons(asking: bool) -> tuple:
    return (gr.update(visible=not asking), gr.update(visible=asking), gr.update(visible=asking))


def wire_delete(b: dict[str, Any], ask: Callable[..., tuple[Any, str]], inputs: list,
                delete: Callable[..., tuple], outputs: list, status: Any,
                extra: list | tuple = ()) -> Any:
    """``ask(*inputs)`` -> (target, question) or (None, why not) and raises nothing;
    ``delete(target, *extra)`` -> the values of ``outputs`` followed by the status text (a
    StudioError becomes the status, with nothing else changed). Returns the confirm event."""
    buttons = [b["ask"], b["confirm"], b["keep"]]

    def on_ask(*vals):
        target, text = ask(*vals)
        return (target, *_buttons(target is not None), text)

    def on_confirm(target, *more):
        try:
            values = delete(target, *more)
        except StudioError as exc:
            values = (*(gr.update() for _ in outputs), f"⚠️ {exc}")
        return (None, *_buttons(False), *values)

    b["ask"].click(on_ask, inputs, [b["target"], *buttons, status])
    event = b["confirm"].click(on_confirm, [b["target"], *extra],
                               [b["target"], *buttons, *outputs, status])
    b["keep"].click(lambda: (None, *_buttons(False), "Nothing was deleted."), None,
                    [b["target"], *buttons, status])
    return event
