"""Dotted ``section.key=value`` overrides of a training config, and the nested-dict merge that
presets, saved presets and overrides are layered with (used by :mod:`studio.config`)."""

from __future__ import annotations

from typing import Any

import yaml

from studio.errors import StudioError


class ConfigError(StudioError, ValueError):
    """A bad training setting; ``str(err)`` is one line naming the key."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into a copy of ``base`` (nested dicts merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.learning_rate=2e-4"`` -> (["train", "learning_rate"], "2e-4" as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{text!r}: an override must look like section.key=value.")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"{key}: not a valid setting name.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot parse the value {raw!r}.") from None
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    out = dict(data)
    cur = out
    for i, p in enumerate(parts[:-1]):
        nxt = cur.get(p)
        if nxt is None:
            nxt = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts)}: unknown setting ({'.'.join(parts[:i + 1])} is "
                              "not a section)")
        cur[p] = dict(nxt)
        cur = cur[p]
    cur[parts[-1]] = value
    return out
