"""Pivotal tuning: the trigger word becomes new tokens whose embeddings train with the LoRA.

``lora.train_text_embeddings`` adds ``lora.num_new_tokens`` tokens (``<s0><s1>``...) to both
tokenizers. Each text encoder's token embedding is wrapped by :class:`NewTokenRows`: the new
tokens read their rows from one small trained parameter (rows x width, fp32), every other token
reads the frozen table, which is never written, so its rows stay bitwise identical (and the
optimizer state is a few rows, not the whole table). The rows start as random vectors scaled to
the standard deviation of the encoder's own table, as diffusers' advanced SDXL script and
replicate's cog-sdxl do: they start near no existing word, at the scale CLIP expects.

The trigger in every training prompt, the instance prompt and the validation prompts is replaced
by the tokens when training runs (the dataset keeps its human trigger). The rows train for the
first ``train.text_embeddings_frac`` of the steps (diffusers' ``train_text_encoder_ti_frac``),
with ``train.text_embeddings_lr``; then they stay as they are. Checkpoints carry them
(:meth:`Pivotal.state`), the run writes them as ``RUN/embeddings.safetensors``
(:mod:`studio.lora.embeddings`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.config import TrainConfig
from studio.errors import StudioError
from studio.lora.embeddings import KEYS, replace_trigger, save_embeddings, token_names

log = logging.getLogger(__name__)

ROWS = "token_embedding.rows"  # the trained parameter's name inside a text encoder


class PivotalError(StudioError, ValueError):
    """Pivotal tuning cannot run with these settings (one sentence)."""


def _rows_module():
    import torch

    class NewTokenRows(torch.nn.Module):
        """A token embedding whose rows for ``ids`` come from the trained ``rows`` parameter."""

        def __init__(self, table, ids: list[int], init):
            super().__init__()
            self.table = table
            size = max(table.num_embeddings, max(ids) + 1)
            slot = torch.full((size,), -1, dtype=torch.long, device=table.weight.device)
            slot[torch.tensor(ids, device=slot.device)] = torch.arange(len(ids), device=slot.device)
            self.register_buffer("slot", slot, persistent=False)
            self.rows = torch.nn.Parameter(init.to(table.weight.device, torch.float32))

        @property
        def weight(self):
            return self.table.weight

        @property
        def num_embeddings(self) -> int:
            return int(self.slot.shape[0])

        @property
        def embedding_dim(self) -> int:
            return self.table.embedding_dim

        def forward(self, ids):
            out = self.table(ids.clamp(max=self.table.num_embeddings - 1))
            slot = self.slot[ids]
            rows = self.rows.to(out.dtype)[slot.clamp(min=0)]
            return torch.where((slot >= 0).unsqueeze(-1), rows, out)

    return NewTokenRows


@dataclass
class Pivotal:
    """The new tokens of one run and their trained rows (one module per text encoder)."""

    trigger: str
    tokens: list[str]
    modules: list[Any]
    frac: float

    @property
    def replacement(self) -> str:
        return "".join(self.tokens)

    def apply(self, text: str) -> str:
        """A prompt as the run trains on it: the trigger replaced by the new tokens."""
        return replace_trigger(text, self.trigger, self.replacement)

    def params(self) -> list[Any]:
        return [m.rows for m in self.modules]

    def train_until(self, total_steps: int) -> int:
        """The first step at which the rows no longer train."""
        return math.ceil(self.frac * total_steps)

    def update(self, step: int, total_steps: int) -> None:
        """Before optimizer step ``step + 1``: the rows train while ``step`` is below
        :meth:`train_until`; afterwards they get no gradient, so no optimizer touches them."""
        on = step < self.train_until(total_steps)
        for p in self.params():
            if not on:
                p.grad = None
            p.requires_grad_(on)

    def state(self) -> dict[str, Any]:
        """{clip_l, clip_g}: the trained rows (a copy on the CPU)."""
        return {k: m.rows.detach().float().cpu().clone() for k, m in zip(KEYS, self.modules,
                                                                          strict=True)}

    def load_state(self, state: dict[str, Any]) -> None:
        import torch

        for k, m in zip(KEYS, self.modules, strict=True):
            with torch.no_grad():
                m.rows.copy_(state[k].to(m.rows.device, m.rows.dtype))

    def save(self, path: Path) -> Path:
        return save_embeddings(path, self.state(), self.trigger, self.tokens)

    def record(self) -> dict[str, Any]:
        """The mapping as the run records it."""
        return {"trigger": self.trigger, "tokens": list(self.tokens)}


def setup(models, cfg: TrainConfig, trigger: str | None) -> Pivotal | None:
    """Add the new tokens to both tokenizers and wrap both token embeddings (None when
    ``lora.train_text_embeddings`` is off). The rows' initial values come from a generator
    seeded with ``train.seed`` (the global RNG, which the training steps draw from, is left as
    it is)."""
    import torch

    lc = cfg.lora
    if not lc.train_text_embeddings:
        return None
    if not trigger:
        raise PivotalError("lora.train_text_embeddings: the dataset has no trigger word to turn "
                           "into new tokens; prepare the dataset with a trigger.")
    tokens = token_names(lc.num_new_tokens)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    rows_cls = _rows_module()
    modules: list[Any] = []
    for i, (tok, enc) in enumerate(zip(models.tokenizers, models.text_encoders, strict=True)):
        if tok not in models.tokenizers[:i]:  # both encoders may share one tokenizer
            have = [t for t in tokens if t in tok.get_vocab()]
            if have:
                raise PivotalError(f"lora.train_text_embeddings: the base's tokenizer already "
                                   f"has {have[0]}; pivotal tuning needs new tokens.")
            tok.add_tokens(tokens)
        ids = tok.convert_tokens_to_ids(tokens)
        table = enc.get_input_embeddings()
        std = table.weight.detach().float().std()
        init = torch.randn((len(ids), table.embedding_dim), generator=gen) * std.cpu()
        enc.set_input_embeddings(rows_cls(table, ids, init))
        modules.append(enc.get_input_embeddings())
    t = cfg.train
    log.info("pivotal tuning: %r becomes %s", trigger, "".join(tokens))
    return Pivotal(trigger, tokens, modules, t.text_embeddings_frac)


def base_rows(encoder):
    """The frozen token table of a (possibly wrapped) text encoder."""
    emb = encoder.get_input_embeddings()
    return getattr(emb, "table", emb).weight


def before_step(piv: Pivotal | None, step: int, total_steps: int) -> None:
    """The trainer's hook before each (micro-)batch: see :meth:`Pivotal.update`."""
    if piv is not None:
        piv.update(step, total_steps)


def mapper(piv: Pivotal | None):
    """The prompt map of a run: the trigger replaced by the new tokens, else None."""
    return piv.apply if piv is not None else None


def rows_group(text_encoders: list[Any], cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer group of the new token rows found in ``text_encoders`` ([] without); no
    weight decay, which would pull them towards zero."""
    params = [p for te in text_encoders for n, p in te.named_parameters() if n.endswith(ROWS)]
    if not params:
        return []
    return [{"params": params, "lr": cfg.train.text_embeddings_lr, "weight_decay": 0.0}]
