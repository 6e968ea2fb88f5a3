"""Trained token embeddings (pivotal tuning) as one safetensors file.

The file holds ``clip_l`` (rows x the first CLIP encoder's width) and ``clip_g`` (rows x the
second's), one row per new token: the layout A1111, ComfyUI, Kohya's SDXL textual-inversion
scripts and diffusers' ``load_textual_inversion`` (one call per encoder) read. Its metadata
records the mapping: the dataset's trigger word and the tokens that replace it in prompts, so a
loader that knows the file also knows what to type. Where the file lives is the run folder's
business (:class:`studio.runs.folder.RunFolder`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import StudioError

KEYS = ("clip_l", "clip_g")  # the first and the second SDXL text encoder


class EmbeddingsError(StudioError, ValueError):
    """An embeddings file that cannot be used (one sentence)."""


@dataclass(frozen=True)
class TokenEmbeddings:
    """What an embeddings file holds: a tensor per encoder key, the trigger and its tokens."""

    tensors: dict[str, Any]
    trigger: str | None
    tokens: list[str]

    @property
    def replacement(self) -> str:
        """The text a trigger becomes in a prompt, e.g. ``<s0><s1>``."""
        return "".join(self.tokens)

    def map_prompt(self, prompt: str) -> str:
        """``prompt`` with each whole-word trigger replaced by the tokens."""
        return replace_trigger(prompt, self.trigger, self.replacement)


def token_names(n: int) -> list[str]:
    """The new tokens of pivotal tuning: ``<s0>``, ``<s1>``..."""
    return [f"<s{i}>" for i in range(n)]


def replace_trigger(text: str, trigger: str | None, replacement: str) -> str:
    """``text`` with every whole-word ``trigger`` replaced (a trigger inside another word, e.g.
    "tok" in "token", stays)."""
    if not trigger or not text:
        return text
    return re.sub(rf"(?<![\w<]){re.escape(trigger)}(?![\w>])", lambda _m: replacement, text)


def save_embeddings(path: Path, tensors: dict[str, Any], trigger: str | None,
                    tokens: list[str]) -> Path:
    """Write ``tensors`` ({clip_l, clip_g}: rows x width, float32) with the mapping."""
    from safetensors.torch import save_file

    missing = [k for k in KEYS if k not in tensors]
    if missing:
        raise EmbeddingsError(f"The embeddings lack {', '.join(missing)}.")
    meta = {"trigger": trigger or "", "tokens": json.dumps(list(tokens))}
    save_file({k: tensors[k].detach().float().cpu().contiguous() for k in KEYS}, str(path),
              metadata=meta)
    return path


def read_embeddings(path: Path) -> TokenEmbeddings:
    """Read an embeddings file; tokens default to ``<s0>``, ``<s1>``... when its metadata has
    none (a file written by another trainer)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one sentence
        raise EmbeddingsError(f"The embeddings file {path} cannot be read ({exc}).") from None
    if any(k not in tensors for k in KEYS):
        raise EmbeddingsError(f"The embeddings file {path} has no clip_l and clip_g tensors.")
    rows = tensors["clip_l"].shape[0]
    try:
        tokens = [str(t) for t in json.loads(meta.get("tokens") or "[]")]
    except ValueError:
        tokens = []
    if len(tokens) != rows:
        tokens = token_names(rows)
    return TokenEmbeddings(tensors, meta.get("trigger") or None, tokens)
