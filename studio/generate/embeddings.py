"""Pivotal-tuning embeddings in Generate: a run's ``embeddings.safetensors`` next to its LoRA is
loaded with it, and the trigger the user types is mapped to the trained tokens.

Each file version (path and mtime) is loaded once per pipeline, into both text encoders (its
``clip_l`` and ``clip_g`` rows), under tokens of its own (``<emb3_s0>``...), so two runs that
both trained ``<s0><s1>``, or the same run loaded twice, never collide in the shared pipeline.
The mapping shown to the user is the run's own: trigger -> ``<s0><s1>``.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import Any

from studio.errors import first_line
from studio.lora.embeddings import read_embeddings, replace_trigger
from studio.lora.refs import LoraRef
from studio.models import ModelLoadError
from studio.runs.folder import companion_files

log = logging.getLogger(__name__)

# pipeline -> {(file, mtime): LoadedEmbeddings}
_PIPE_EMBEDDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_IDS = itertools.count()


@dataclass(frozen=True)
class LoadedEmbeddings:
    file: str
    trigger: str | None
    run_tokens: list[str]  # as trained, e.g. <s0><s1>
    pipe_tokens: list[str]  # as loaded into this pipeline

    def map_prompt(self, prompt: str) -> str:
        return replace_trigger(prompt, self.trigger, "".join(self.pipe_tokens))

    def record(self) -> dict[str, Any]:
        """What an image's params say about the mapping."""
        return {"file": self.file, "trigger": self.trigger, "tokens": "".join(self.run_tokens)}


def embeddings_file(ref: LoraRef | None):
    """The embeddings file that travels with the LoRA ``ref`` (same folder), else None."""
    if ref is None or ref.weight_name is None:
        return None
    return next(iter(companion_files(ref.path).values()), None)


def apply_embeddings(pipe, ref: LoraRef | None) -> LoadedEmbeddings | None:
    """Load the embeddings of ``ref`` into ``pipe`` once; None when the LoRA has none."""
    file = embeddings_file(ref)
    if file is None:
        return None
    key = (str(file.resolve()), file.stat().st_mtime_ns)
    loaded = _PIPE_EMBEDDINGS.setdefault(pipe, {})
    if key in loaded:
        return loaded[key]
    emb = read_embeddings(file)
    n = next(_IDS)
    tokens = [f"<emb{n}_s{i}>" for i in range(len(emb.tokens))]
    pairs = (("clip_l", pipe.text_encoder, pipe.tokenizer),
             ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2))
    try:
        for k, encoder, tokenizer in pairs:
            pipe.load_textual_inversion(emb.tensors[k].to(encoder.dtype), token=tokens,
                                        text_encoder=encoder, tokenizer=tokenizer)
    except Exception as exc:
        raise ModelLoadError(f"The embeddings {file.name} of {ref.label} could not be loaded into "
                             f"this base model ({first_line(exc, 160)}).") from exc
    loaded[key] = LoadedEmbeddings(file.name, emb.trigger, emb.tokens, tokens)
    log.info("loaded %s: %r -> %s", file, emb.trigger, "".join(emb.tokens))
    return loaded[key]


def mapping_note(params: dict[str, Any]) -> str:
    """A sentence for the UI about an image's trigger mapping ("" without embeddings)."""
    e = params.get("embeddings")
    if not e or not e.get("trigger"):
        return ""
    return (f" Trigger `{e['trigger']}` → `{e['tokens']}` (trained embeddings from "
            f"`{e['file']}`).")
