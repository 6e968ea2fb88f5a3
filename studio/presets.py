"""Presets saved from the Train tab: ``STUDIO_HOME/presets/NAME.yaml``.

A saved preset is sparse like the bundled ones (only the settings that differ from the
defaults), written against the current config version, with a comment header that says what it
was made from (the Train tab shows a preset's header as its note). :mod:`studio.config` lists
saved presets after the bundled ones and finds them by name (``--preset NAME`` in the CLI too).
A bundled preset's name cannot be taken.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from studio.config import PRESETS_DIR, TrainConfig
from studio.errors import StudioError
from studio.fsutil import atomic_write_text
from studio.workspace import WorkspaceError, safe_name, user_presets_dir

# Settings that belong to one run, never to a preset.
RUN_ONLY = {"output_dir", "data.dataset", "config_version"}


class PresetError(StudioError, ValueError):
    """A preset name or save the user must change (one sentence)."""


class PresetExists(PresetError):
    """A saved preset of that name exists; saving again with ``overwrite`` replaces it."""


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def sparse(cfg: TrainConfig) -> dict[str, Any]:
    """The nested settings of ``cfg`` that differ from the defaults (run-only keys left out)."""
    default = _flat(TrainConfig().model_dump(mode="json"))
    out: dict[str, Any] = {}
    for key, value in _flat(cfg.model_dump(mode="json")).items():
        if key in RUN_ONLY or default.get(key) == value:
            continue
        section, _, field = key.rpartition(".")
        (out.setdefault(section, {}) if section else out)[field] = value
    return out


def checked_name(name: str | None) -> str:
    """A valid name for a saved preset; a :class:`PresetError` for a bad or bundled one."""
    try:
        name = safe_name((name or "").strip().removesuffix(".yaml"), "preset name")
    except WorkspaceError as exc:
        raise PresetError(str(exc)) from None
    if (PRESETS_DIR / f"{name}.yaml").is_file():
        raise PresetError(f"{name!r} is a bundled preset; save your settings under another name.")
    return name


def save_preset(name: str | None, cfg: TrainConfig, *, based_on: str | None = None,
                changed: list[str] | tuple[str, ...] = (), overwrite: bool = False) -> str:
    """Write ``cfg`` as the saved preset ``name``; its name. ``based_on`` and ``changed`` (the
    keys the user changed) go into the header. An existing saved preset is replaced only with
    ``overwrite`` (else :class:`PresetExists`)."""
    name = checked_name(name)
    path = user_presets_dir() / f"{name}.yaml"
    if path.exists() and not overwrite:
        raise PresetExists(f"A saved preset named {name!r} exists; confirm to replace it.")
    head = f"Saved from the Train tab on {time.strftime('%Y-%m-%d %H:%M')}"
    head += f", from preset {based_on}" if based_on else ""
    head += f", with changes to: {', '.join(changed)}." if changed else "."
    body = yaml.safe_dump(sparse(cfg), sort_keys=False, allow_unicode=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# {head}\n{body if body.strip() != '{}' else ''}")
    return name


def is_saved(name: str | None) -> bool:
    """True when ``name`` is a preset saved in the workspace (not a bundled one)."""
    try:
        return (user_presets_dir() / f"{checked_name(name)}.yaml").is_file()
    except PresetError:
        return False
