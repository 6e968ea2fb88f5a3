"""The Train tab's simple mode: the six settings most people change, on top, with help in plain
words; every other setting is under Advanced. A field has exactly one widget: the simple ones are
left out of Advanced, so the two never disagree.

Also what happens to the user's changes when another preset is picked: a field the user changed
(its widget differs from the old preset's value) keeps the user's value, every other field takes
the new preset's value, and the note says which were kept (as kohya_ss and OneTrainer do).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.ui.config_widgets import field_label, make_widget, parse_widget, widget_value

# (dotted key, widget kind, label, help in plain words)
SIMPLE: list[tuple[str, str, str, str]] = [
    ("train.max_train_steps", "int", "Training steps",
     "How long to train. More steps learn the face more closely but can copy the photos "
     "(overfit). Typical: 500-1500 for 10-20 photos; 20-50 for a quick test."),
    ("data.resolution", "int", "Resolution (px)",
     "Size of the training images. 1024 is SDXL's own size and gives the most detail; 768 or "
     "512 train faster; 64 only for a quick test of the tiny demo models."),
    ("train.learning_rate", "float", "Learning rate",
     "How big each learning step is. 1e-4 is typical; higher learns faster but can burn in "
     "artefacts, lower may learn too little. Prodigy uses 1.0."),
    ("lora.rank", "int", "LoRA rank (size)",
     "How much the LoRA can hold. 8-32 is typical for a person; higher keeps more detail and "
     "makes a bigger file."),
    ("checkpoints.every_n_steps", "int", "Save a checkpoint every N steps",
     "A checkpoint is a snapshot you can resume from, compare and export. Typical: every "
     "100-250 steps."),
    ("validation.every_n_steps", "int", "Sample images every N steps",
     "Makes test images during training so you can watch progress; each sample costs a few "
     "seconds. Typical: the checkpoint interval. Empty: only at the end."),
]
SIMPLE_KEYS = frozenset(k for k, *_ in SIMPLE)


def build_simple(values: dict[str, Any]) -> tuple[list[tuple[str, str]], list]:
    """The simple-mode widgets, filled with ``values`` (a preset's flattened config):
    ([(dotted key, kind), ...], [widget, ...])."""
    keys, widgets = [], []
    with gr.Group(elem_id="train-simple"):
        with gr.Row():
            for key, kind, label, about in SIMPLE[:3]:
                widgets.append(make_widget(key, kind, None, about, values.get(key), label))
                keys.append((key, kind))
        with gr.Row():
            for key, kind, label, about in SIMPLE[3:]:
                widgets.append(make_widget(key, kind, None, about, values.get(key), label))
                keys.append((key, kind))
    return keys, widgets


def label_of(key: str) -> str:
    """What the user sees for a setting: the simple-mode label, else the Advanced one."""
    return next((label for k, _, label, _ in SIMPLE if k == key), None) or field_label(key)


def edited(keys: list[tuple[str, str]], values: list[Any], preset_values: dict[str, Any]
           ) -> list[str]:
    """The keys whose widget differs from the preset's value (what the user changed). A value a
    widget cannot hold counts as changed."""
    out = []
    for (key, kind), raw in zip(keys, values, strict=True):
        try:
            changed = parse_widget(kind, raw) != preset_values.get(key)
        except (ValueError, TypeError, OverflowError):
            changed = True
        if changed:
            out.append(key)
    return out


def refill(keys: list[tuple[str, str]], values: list[Any], old: dict[str, Any],
           new: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Another preset was picked: (one update per widget, the keys kept). A field the user
    changed keeps its value (gr.skip()); the others take the new preset's value."""
    kept = set(edited(keys, values, old)) if old else set()
    updates = [gr.skip() if key in kept else gr.update(value=widget_value(kind, new.get(key)))
               for key, kind in keys]
    return updates, [k for k, _ in keys if k in kept]


def kept_note(kept: list[str], values: dict[str, Any]) -> str:
    """The sentence under the preset note naming the changes that were kept."""
    if not kept:
        return ""
    shown = ", ".join(f"{label_of(k)} ({values[k]})" if k in values else label_of(k)
                      for k in kept)
    return (f"\n\n**Kept your changes:** {shown}. The other settings now have this preset's "
            "values.")
