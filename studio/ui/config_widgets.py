"""TrainConfig <-> widgets: one widget per config field, filled with a preset's values; only the
widgets the user changed become ``key=value`` overrides on top of the preset.

The schema comes from the pydantic model (studio.config.TrainConfig), so a new config field
gets its widget without a change here.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import gradio as gr
import yaml

from studio import config as cfgmod
from studio.config import ConfigError

# Config fields the Train tab fills itself (the dataset picker, the run folder, the version).
SKIP_FIELDS = {"output_dir", "data.dataset", "config_version"}
# Section -> (title, what it holds): the Advanced accordions and the prefix of their labels.
SECTIONS = {"general": ("General", ""), "model": ("Model", "Base model and VAE."),
            "data": ("Data", "How the images are read, resized and augmented."),
            "lora": ("LoRA", "The LoRA layers: which, how large, how initialised."),
            "train": ("Training", "Optimizer, schedule, precision and speed."),
            "checkpoints": ("Checkpoints", "Resumable snapshots during the run."),
            "validation": ("Validation", "Sample images during and after the run."),
            "logging": ("Logging", "Experiment trackers.")}


def field_label(key: str) -> str:
    """"checkpoints.every_n_steps" -> "Checkpoints: every n steps": the label names its section
    (two sections both have every_n_steps)."""
    section, _, name = key.rpartition(".")
    title = SECTIONS.get(section or "general", (section.title(), ""))[0]
    return f"{title}: {name.replace('_', ' ')}"


def config_fields(model_cls) -> list[tuple[str, list[tuple[str, Any]]]]:
    """[(section, [(dotted key, FieldInfo), ...]), ...] for a TrainConfig-like pydantic model:
    nested models become sections, top-level scalars go to a "general" section."""
    from pydantic import BaseModel

    general: list[tuple[str, Any]] = []
    sections: list[tuple[str, list[tuple[str, Any]]]] = []
    for name, info in model_cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            items = [(f"{name}.{k}", fi) for k, fi in ann.model_fields.items()
                     if f"{name}.{k}" not in SKIP_FIELDS]
            sections.append((name, items))
        elif name not in SKIP_FIELDS:
            general.append((name, info))
    return ([("general", general)] if general else []) + sections


def widget_kind(ann: Any) -> tuple[str, Any]:
    """Widget kind for a field annotation: bool | int | float | choice | list | text |
    text_opt (optional: empty means None; numbers are parsed), and the choices of a choice."""
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    optional = type(None) in typing.get_args(ann)
    if ann is bool:
        return "bool", None
    if typing.get_origin(ann) is typing.Literal:
        return "choice", list(typing.get_args(ann))
    if ann is int:
        return "int", None
    if ann is float:
        return "float", None
    if typing.get_origin(ann) is list or (optional and args and typing.get_origin(args[0])
                                         is list):
        return "list", None
    return ("text_opt" if optional else "text"), None


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"learning_rate": 1e-4}} -> {"train.learning_rate": 1e-4}."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def widget_value(kind: str, value: Any) -> Any:
    """Config value -> what the widget of ``kind`` shows."""
    if kind in ("bool", "int", "float", "choice"):
        return value
    if kind == "list":
        return "\n".join(str(v) for v in (value or []))
    return "" if value is None else str(value)


def parse_widget(kind: str, raw: Any) -> Any:
    """Widget value -> config value (empty text -> None; list: one item per line)."""
    if kind == "bool":
        return bool(raw)
    if kind == "int":
        return int(raw) if raw is not None else None
    if kind == "float":
        return float(raw) if raw is not None else None
    if kind == "choice":
        return raw
    if kind == "list":
        return [ln.strip() for ln in str(raw or "").splitlines() if ln.strip()]
    text = str(raw or "").strip()
    if kind == "text":
        return text
    if not text:
        return None
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, int | float | bool) and not isinstance(v, str) else text


def overrides_from_widgets(keys: list[tuple[str, str]], values: list[Any],
                           preset_values: dict[str, Any]) -> list[str]:
    """``key=value`` overrides for the widgets whose value differs from the preset's. A value
    a widget cannot hold (e.g. an infinite step count) is a :class:`ConfigError` naming it."""
    out = []
    for (key, kind), raw in zip(keys, values, strict=True):
        try:
            val = parse_widget(kind, raw)
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"{key}: {raw!r} is not a valid {kind} value.") from None
        if val != preset_values.get(key):
            out.append(f"{key}={json.dumps(val)}")  # JSON is valid YAML: types survive
    return out


def extra_lines(text: str | None) -> list[str]:
    """The non-empty lines of the "Extra overrides" box."""
    return [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]


def preset_values(preset: str | None) -> dict[str, Any]:
    """The flattened config a preset gives ({} when the preset cannot be loaded)."""
    try:
        return flatten(cfgmod.load_config(preset=preset or None).model_dump(mode="json"))
    except ConfigError:
        return {}


def preset_note(preset: str | None) -> str:
    """The comment block at the top of a preset file (what it is for)."""
    if not preset:
        return ""
    try:
        text = cfgmod.preset_path(preset).read_text(encoding="utf-8")
    except (ConfigError, OSError):
        return ""
    lines = []
    for ln in text.splitlines():
        if not ln.startswith("#"):
            break
        lines.append(ln.lstrip("# ").rstrip())
    return " ".join(lines)


def make_widget(key: str, kind: str, extra: Any, info: Any, value: Any,
                label: str | None = None) -> gr.components.Component:
    """The widget for one config field (elem_id ``train-cfg-SECTION-FIELD``)."""
    label = label or field_label(key)
    help_text = (getattr(info, "description", None) or info or "")[:300] or None
    eid = "train-cfg-" + key.replace(".", "-").replace("_", "-")
    if kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=help_text, elem_id=eid)
    if kind == "choice":
        return gr.Dropdown(extra, value=value, label=label, info=help_text, elem_id=eid)
    if kind in ("int", "float"):
        return gr.Number(value=value, label=label, info=help_text, elem_id=eid,
                         precision=0 if kind == "int" else None)
    if kind == "list":
        return gr.Textbox(value=widget_value(kind, value), label=label, lines=2,
                          info=(help_text or "") + " One per line.", elem_id=eid)
    return gr.Textbox(value=widget_value(kind, value), label=label, info=help_text, elem_id=eid,
                      placeholder="(empty)" if kind == "text_opt" else None)


def build_config_widgets(values: dict[str, Any], skip: set[str] | frozenset = frozenset()
                         ) -> tuple[list[tuple[str, str]], list]:
    """One accordion per config section with a widget per field (except ``skip``: the fields
    shown elsewhere), filled with ``values``. Returns ([(dotted key, kind), ...], [widget, ...])
    in the same order."""
    keys: list[tuple[str, str]] = []
    widgets: list[gr.components.Component] = []
    for section, items in config_fields(cfgmod.TrainConfig):
        items = [(k, fi) for k, fi in items if k not in skip]
        title, about = SECTIONS.get(section, (section.title(), ""))
        with gr.Accordion(title, open=False, elem_id=f"train-section-{section}"):
            if about:
                gr.Markdown(about)
            for key, info in items:
                kind, extra = widget_kind(info.annotation)
                widgets.append(make_widget(key, kind, extra, info, values.get(key)))
                keys.append((key, kind))
    return keys, widgets
