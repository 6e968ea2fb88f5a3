"""The Train tab's preset list and "Save as preset": the current preset with the user's changes
(simple mode, Advanced, extra overrides) saved under a name in the workspace (studio.presets),
listed with the bundled presets and usable from the CLI (``--preset NAME``). A bundled name is
refused; an existing saved preset is replaced only after "Replace" is pressed.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio import config as cfgmod
from studio import presets
from studio.errors import StudioError, first_line
from studio.ui.config_widgets import preset_values
from studio.ui.train_handlers import TrainHandlers
from studio.ui.train_simple import edited


def preset_choices() -> list[str]:
    return cfgmod.list_presets()


class PresetHandlers:
    def __init__(self, train: TrainHandlers):
        self.train = train

    def refresh(self) -> dict:
        """The preset dropdown read again (page load); the picked preset stays picked."""
        return gr.update(choices=preset_choices())

    def save(self, name: str | None, preset: str | None, extra: str | None,
             pvalues: dict | None, *wvals, overwrite: bool = False) -> tuple:
        """(message, preset dropdown, preset values, Replace button)."""
        keys = self.train.widget_keys
        try:
            cfg = cfgmod.load_config(preset=preset or None,
                                     overrides=self.train.overrides(pvalues, extra, wvals))
            changed = edited(keys, list(wvals), pvalues or {}) if keys else []
            saved = presets.save_preset(name, cfg, based_on=preset or None,
                                        changed=[*changed, *(["extra overrides"] if
                                                             (extra or "").strip() else [])],
                                        overwrite=overwrite)
        except presets.PresetExists as exc:
            return f"⚠️ {first_line(exc)}", gr.skip(), gr.skip(), gr.update(visible=True)
        except StudioError as exc:
            return f"⚠️ {first_line(exc)}", gr.skip(), gr.skip(), gr.update(visible=False)
        return (f"✅ Saved preset **{saved}** (in the workspace's presets folder; the CLI takes "
                f"`--preset {saved}`).",
                gr.update(choices=preset_choices(), value=saved), preset_values(saved),
                gr.update(visible=False))

    def replace(self, name, preset, extra, pvalues, *wvals) -> tuple:
        return self.save(name, preset, extra, pvalues, *wvals, overwrite=True)


def build_save(c: dict[str, Any]) -> None:
    with gr.Accordion("Save these settings as a preset", open=False, elem_id="train-save-preset"):
        gr.Markdown("Saves the preset above with your changes under a new name; it is then in "
                    "the preset list (and `python -m studio train --preset NAME` takes it).")
        with gr.Row():
            c["preset_name"] = gr.Textbox(label="Preset name", scale=3,
                                          elem_id="train-preset-name",
                                          placeholder="e.g. my-portrait-64px")
            c["preset_save"] = gr.Button("Save preset", size="sm", scale=1,
                                         elem_id="train-preset-save")
            c["preset_replace"] = gr.Button("Replace it", size="sm", scale=1, variant="stop",
                                            visible=False, elem_id="train-preset-replace")
        c["preset_status"] = gr.Markdown(elem_id="train-preset-status")


def wire_presets(p: PresetHandlers, c: dict[str, Any]) -> None:
    inputs = [c["preset_name"], c["preset"], c["extra"], c["preset_values"], *c["widgets"]]
    outputs = [c["preset_status"], c["preset"], c["preset_values"], c["preset_replace"]]
    c["preset_save"].click(p.save, inputs, outputs)
    c["preset_replace"].click(p.replace, inputs, outputs)
    c["preset_name"].change(lambda: gr.update(visible=False), None, c["preset_replace"],
                            show_progress="hidden")
